// PM2 starts the sidecar; the sidecar starts the worker and reports for it.
//   pm2 start examples/node/ecosystem.config.js
// Put SUPABASE_URL and SUPABASE_SECRET_KEY in the environment PM2 is started
// from (or in `env` below from a file you do not commit). Without them the
// rows go to the local store: see them with `heartbeat-sidecar status`.
module.exports = {
  apps: [
    {
      name: 'roundtable-worker',
      script: 'heartbeat-sidecar', // the binary, on PATH (e.g. /usr/local/bin)
      interpreter: 'none', // a native binary, not a Node script
      args: [
        'run', '--name', 'roundtable-worker',
        '--job-pattern', 'done$', '--error-pattern', '^ERROR',
        '--', 'node', 'examples/node/worker.mjs',
      ],
      // PM2 sends SIGINT on stop and SIGKILL 1.6 s later. The sidecar's final
      // row goes out within its 1 s budget (HP_SHUTDOWN_BUDGET_MS).
      kill_timeout: 1600,
      env: {
        HP_HEARTBEAT_INTERVAL_SECS: '30',
      },
    },
    // PM2 with several instances: each row gets -$NODE_APP_INSTANCE.
    // {
    //   name: 'crawler', script: 'heartbeat-sidecar', interpreter: 'none', instances: 4,
    //   args: ['run', '--name', 'crawler', '--instance-suffix', '--', 'node', 'crawler.mjs'],
    // },
  ],
};
