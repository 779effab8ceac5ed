// A Node worker that knows nothing about hp-heartbeat: it processes fake
// jobs, logs one line per job, and shuts down cleanly on SIGINT/SIGTERM.
// Under the sidecar (see ecosystem.config.js) its output lines are counted
// with --job-pattern 'done$' and --error-pattern '^ERROR'. For exact counts
// from code instead, write lines to HP_SIDECAR_SOCKET (docs/sidecar.md).
let n = 0;
let stopping = false;

const timer = setInterval(() => {
  n += 1;
  if (n % 10 === 0) {
    console.error(`ERROR job ${n} failed: upstream timed out`);
  } else {
    console.log(`job ${n} done`);
  }
}, 200);

function shutdown(signal) {
  if (stopping) return; // PM2 and systemd may deliver the signal twice
  stopping = true;
  clearInterval(timer);
  console.log(`${signal}: finished after ${n} jobs, exiting`);
  process.exit(0);
}
process.on('SIGINT', () => shutdown('SIGINT'));
process.on('SIGTERM', () => shutdown('SIGTERM'));
