// A Node worker that knows nothing about hp-heartbeat: it processes fake
// jobs, logs one line per job, and shuts down cleanly on SIGINT/SIGTERM.
// Run it under the sidecar (see ecosystem.config.js) to report it.
//
// Optional exact counts: if HP_SIDECAR_SOCKET is set, write `job`,
// `error <message>` or `meta <key> <json>` lines to it.
import net from 'node:net';

const socket = process.env.HP_SIDECAR_SOCKET ? net.createConnection(process.env.HP_SIDECAR_SOCKET) : null;
socket?.on('error', () => {}); // reporting must never take the worker down
const report = (line) => socket?.write(line + '\n');

let n = 0;
let stopping = false;
report(`meta queue "roundtable"`);

const timer = setInterval(() => {
  n += 1;
  if (n % 10 === 0) {
    console.error(`ERROR job ${n} failed: upstream timed out`);
    report(`error job ${n}: upstream timed out`);
  } else {
    console.log(`job ${n} done`);
    report('job');
  }
}, 200);

function shutdown(signal) {
  if (stopping) return; // PM2 and systemd may deliver the signal twice
  stopping = true;
  clearInterval(timer);
  console.log(`${signal}: finished job ${n}, exiting`);
  socket?.end();
  process.exit(0);
}
process.on('SIGINT', () => shutdown('SIGINT'));
process.on('SIGTERM', () => shutdown('SIGTERM'));
