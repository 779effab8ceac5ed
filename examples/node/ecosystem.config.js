// PM2 starts the sidecar; the sidecar starts the worker and reports for it.
//   pm2 start examples/node/ecosystem.config.js
// It works from any directory: heartbeat-sidecar is found on PATH, the worker
// next to this file.
//
// PM2 passes the environment you run `pm2 start` in to the app: set
// SUPABASE_URL and SUPABASE_SECRET_KEY there (or in a file you source and do
// not commit). Without them the rows go to the local store: see them with
// `heartbeat-sidecar status`. Other settings: HP_* (docs/sidecar.md).
const fs = require('node:fs');
const path = require('node:path');

// PM2 looks for `script` in its working directory before PATH: from the
// repository root a bare 'heartbeat-sidecar' is the crate's folder, which
// fails to spawn (EACCES) while PM2 shows `online`. So resolve it here.
function onPath(command) {
  for (const dir of (process.env.PATH || '').split(path.delimiter)) {
    if (!path.isAbsolute(dir)) continue; // '' or '.' is the working directory: the same trap
    const file = path.join(dir, command);
    try {
      fs.accessSync(file, fs.constants.X_OK);
      if (fs.statSync(file).isFile()) return file;
    } catch {
      // not in this directory
    }
  }
  throw new Error(
    `${command} is not on PATH (${process.env.PATH}): install it ` +
      '(README.md, "Any other worker: the sidecar") or add its directory to PATH, then pm2 start again',
  );
}

const apps = [
  {
    name: 'roundtable-worker',
    script: onPath('heartbeat-sidecar'),
    interpreter: 'none', // a native binary, not a Node script
    // Fork mode only: cluster mode require()s the script into Node, so the
    // binary never runs (PM2 restarts it in a loop, with empty logs). For N
    // copies keep fork mode, add `instances: N` here and '--instance-suffix'
    // after 'run': rows roundtable-worker-0, -1, ... (from NODE_APP_INSTANCE).
    exec_mode: 'fork',
    args: [
      'run', '--name', 'roundtable-worker',
      '--job-pattern', 'done$', '--error-pattern', '^ERROR',
      '--', 'node', path.join(__dirname, 'worker.mjs'),
    ],
    // PM2 sends SIGINT on stop and SIGKILL 1.6 s later. The sidecar's final
    // row goes out within its 1 s budget (HP_SHUTDOWN_BUDGET_MS).
    kill_timeout: 1600,
    // PM2's memory figure, and max_memory_restart, are the sidecar's own
    // (a few MB), not the worker's: limit the worker with the sidecar's
    // --max-memory SIZE instead (docs/sidecar.md).
  },
];

// With HP_ALERT_WEBHOOKS set (one or more webhook URLs, separated by
// spaces) the same file also starts the alerts watcher: crashed, stale, hung
// and circuit-breaker events posted there (docs/alerts.md). A watcher per
// host is fine: they share each webhook's place in the store, and one sends.
if (process.env.HP_ALERT_WEBHOOKS) {
  apps.push({
    name: 'hp-alerts',
    script: onPath('heartbeat-sidecar'),
    interpreter: 'none', // fork mode, PM2's default: one watcher per host is enough
    // The URLs stay in the environment, out of the process list (the
    // sidecar keeps them from the worker). Slack and Discord URLs get their
    // own message format by themselves (docs/alerts.md).
    args: ['alerts'],
    // On SIGINT it finishes the post in hand (at most 10 s), then lets go of
    // its webhooks so another watcher takes over at once.
    kill_timeout: 15000,
  });
}

for (const app of apps) {
  if (/^cluster/.test(app.exec_mode || '')) {
    throw new Error(
      `${app.name}: exec_mode '${app.exec_mode}' cannot run heartbeat-sidecar (PM2's cluster mode ` +
        "loads the script into Node, so the binary never starts): use exec_mode 'fork' with " +
        "instances: N and '--instance-suffix'",
    );
  }
}

module.exports = { apps };
