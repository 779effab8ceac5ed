//! chaos-server: the misbehaving PostgREST of `hp_heartbeat_tests::chaos` on a
//! port, cycling through every failure mode on a schedule, for the soak
//! (`scripts/soak.sh`).
//!
//!     chaos-server --port 54321 --cycle 30s
//!
//! Each failure mode runs for one cycle, then `accept` for one cycle, then the
//! next failure mode, round and round until killed. One line per event on
//! stdout, each starting with its Unix time and the seconds since start:
//!
//!     1763934600.123 +0.000 listening http://127.0.0.1:54321
//!     1763934600.123 +0.000 mode accept
//!     1763934600.456 +0.333 request seq=1 POST /rest/v1/hp_worker_status?on_conflict=worker_name worker=orders row=running answer=201 body=1234
//!     1763934630.124 +30.001 mode refuse
//!     1763934901.002 +300.879 huge-body seq=412 offered=209715200 taken=1245184 client_closed=true

use std::io::Write;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hp_heartbeat_tests::chaos::{Answer, ChaosServer, Mode};

const USAGE: &str = "usage: chaos-server [--port N] [--cycle 30s] [--modes refuse,500,503,401,429,hang,slow,reset,flap,huge]
                    [--retry-after 30] [--slow 3s] [--flap 2s] [--huge 200MiB] [--huge-chunk 64KiB] [--huge-pause 1ms]
Each listed failure mode runs for one cycle, then accept for one cycle; the list repeats until killed.
Durations: 500ms, 30s, 5m, 1h (a bare number is seconds). Sizes: 200MiB, 64KiB, 1GiB, or bytes.";

#[derive(Debug, Clone, PartialEq)]
struct Options {
    port: u16,
    cycle: Duration,
    modes: Vec<String>,
    retry_after: u64,
    slow: Duration,
    flap: Duration,
    huge: u64,
    huge_chunk: usize,
    huge_pause: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            port: 0,
            cycle: Duration::from_secs(30),
            modes: ALL_MODES.iter().map(|m| (*m).to_owned()).collect(),
            retry_after: 30,
            slow: Duration::from_secs(3),
            flap: Duration::from_secs(2),
            huge: 200 * 1024 * 1024,
            huge_chunk: 64 * 1024,
            huge_pause: Duration::from_millis(1),
        }
    }
}

/// Every failure mode, in the default order.
const ALL_MODES: [&str; 10] = [
    "refuse", "500", "503", "401", "429", "hang", "slow", "reset", "flap", "huge",
];

fn main() {
    let options = match parse(std::env::args().skip(1)) {
        Ok(Some(o)) => o,
        Ok(None) => {
            println!("{USAGE}");
            return;
        }
        Err(e) => {
            eprintln!("chaos-server: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    let schedule: Vec<Mode> = match options
        .modes
        .iter()
        .map(|name| mode(name, &options))
        .collect::<Result<_, _>>()
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("chaos-server: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    let server = match ChaosServer::bind(options.port) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "chaos-server: cannot listen on 127.0.0.1:{}: {e} (choose another --port, or 0 for any free one)",
                options.port
            );
            std::process::exit(1);
        }
    };
    let start = SystemTime::now();
    let mut out = std::io::stdout().lock();
    let mut say = |at: SystemTime, what: &str| {
        let unix = at.duration_since(UNIX_EPOCH).unwrap_or_default();
        let since = at.duration_since(start).unwrap_or_default();
        // A closed stdout (the soak ended) ends the server too.
        if writeln!(
            out,
            "{}.{:03} +{}.{:03} {what}",
            unix.as_secs(),
            unix.subsec_millis(),
            since.as_secs(),
            since.subsec_millis()
        )
        .and_then(|()| out.flush())
        .is_err()
        {
            std::process::exit(0);
        }
    };
    say(start, &format!("listening {}", server.uri()));
    say(SystemTime::now(), "mode accept");

    // accept, failure 1, accept, failure 2, ... accept, failure N, (repeat)
    let mut next_switch = Instant::now() + options.cycle;
    let mut phase = 0usize;
    let mut bodies_seen = 0usize;
    loop {
        std::thread::sleep(Duration::from_millis(100).min(options.cycle));
        for r in server.take_requests() {
            let answer = match r.answer {
                Answer::Status(code) => code.to_string(),
                Answer::Delayed(code, _) => format!("delayed-{code}"),
                Answer::Hung => "hung".into(),
                Answer::Reset => "reset".into(),
                Answer::HugeBody(_) => "huge-body".into(),
                Answer::Closed => "closed".into(),
            };
            let worker = r.worker_name().unwrap_or_else(|| "-".into());
            let status = r.row_text("status").unwrap_or_else(|| "-".into());
            say(
                r.wall,
                &format!(
                    "request seq={} {} {} worker={worker} row={status} answer={answer} body={}",
                    r.seq, r.method, r.path, r.body_len
                ),
            );
        }
        let bodies = server.body_bytes_taken();
        for b in bodies.iter().skip(bodies_seen) {
            say(
                SystemTime::now(),
                &format!(
                    "huge-body seq={} offered={} taken={} client_closed={}",
                    b.seq, b.offered, b.taken, b.client_closed
                ),
            );
        }
        bodies_seen = bodies.len();
        if Instant::now() >= next_switch {
            phase += 1;
            let next = if phase % 2 == 0 {
                Mode::Accept
            } else {
                schedule[(phase / 2) % schedule.len()].clone()
            };
            server.set(next.clone());
            say(SystemTime::now(), &format!("mode {}", next.label()));
            next_switch += options.cycle;
        }
    }
}

fn mode(name: &str, o: &Options) -> Result<Mode, String> {
    Ok(match name {
        "accept" => Mode::Accept,
        "refuse" => Mode::Refuse,
        "500" => Mode::server_error(),
        "503" => Mode::schema_reloading(),
        "401" => Mode::unauthorized(),
        "429" => Mode::too_many_requests(o.retry_after),
        "hang" => Mode::Hang,
        "slow" => Mode::Slow(o.slow),
        "reset" => Mode::Reset,
        "flap" => Mode::Flap { period: o.flap },
        "huge" => Mode::HugeBody {
            bytes: o.huge,
            chunk: o.huge_chunk,
            pause: o.huge_pause,
        },
        other => {
            return Err(format!(
                "--modes: unknown mode {other:?}: use any of accept,{}",
                ALL_MODES.join(",")
            ))
        }
    })
}

/// `Ok(None)` for `--help`.
fn parse(mut args: impl Iterator<Item = String>) -> Result<Option<Options>, String> {
    let mut o = Options::default();
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            return Ok(None);
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--port" => {
                o.port = value
                    .parse()
                    .map_err(|_| format!("--port {value:?} is not a port: use 0 to 65535"))?;
            }
            "--cycle" => o.cycle = positive(duration(&flag, &value)?, &flag, &value)?,
            "--modes" => {
                o.modes = value.split(',').map(|m| m.trim().to_owned()).collect();
                for m in &o.modes {
                    mode(m, &o)?;
                }
            }
            "--retry-after" => {
                o.retry_after = value.parse().map_err(|_| {
                    format!("--retry-after {value:?} is not whole seconds: e.g. 30")
                })?;
            }
            "--slow" => o.slow = duration(&flag, &value)?,
            "--flap" => o.flap = positive(duration(&flag, &value)?, &flag, &value)?,
            "--huge" => o.huge = size(&flag, &value)?,
            "--huge-chunk" => {
                o.huge_chunk = usize::try_from(size(&flag, &value)?)
                    .ok()
                    .filter(|c| *c > 0)
                    .ok_or_else(|| format!("{flag} {value:?} must be at least 1 byte"))?;
            }
            "--huge-pause" => o.huge_pause = duration(&flag, &value)?,
            _ => return Err(format!("unknown flag {flag:?}")),
        }
    }
    Ok(Some(o))
}

fn positive(d: Duration, flag: &str, value: &str) -> Result<Duration, String> {
    if d.is_zero() {
        Err(format!("{flag} {value:?} must be longer than zero"))
    } else {
        Ok(d)
    }
}

/// `500ms`, `30s`, `5m`, `1h 30m` (humantime); a bare number is seconds.
fn duration(flag: &str, value: &str) -> Result<Duration, String> {
    if let Ok(secs) = value.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(value).map_err(|e| {
        format!("{flag} {value:?} is not a duration ({e}): use e.g. 500ms, 30s, 5m or 1h")
    })
}

/// `200MiB`, `64KiB`, `1GiB`, or plain bytes.
fn size(flag: &str, value: &str) -> Result<u64, String> {
    let bad = || format!("{flag} {value:?} is not a size: use e.g. 200MiB, 64KiB or 1048576");
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let n: u64 = number.parse().map_err(|_| bad())?;
    let scale: u64 = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(bad()),
    };
    n.checked_mul(scale).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> impl Iterator<Item = String> + '_ {
        s.split_whitespace().map(str::to_owned)
    }

    #[test]
    fn parses_every_flag() {
        let o = parse(args(
            "--port 5000 --cycle 10s --modes hang,429 --retry-after 5 --slow 1500ms --flap 2s --huge 1MiB --huge-chunk 4KiB --huge-pause 0ms",
        ))
        .expect("valid flags")
        .expect("not --help");
        assert_eq!(o.port, 5000);
        assert_eq!(o.cycle, Duration::from_secs(10));
        assert_eq!(o.modes, vec!["hang", "429"]);
        assert_eq!(mode("429", &o), Ok(Mode::too_many_requests(5)));
        assert_eq!(
            mode("slow", &o),
            Ok(Mode::Slow(Duration::from_millis(1500)))
        );
        assert_eq!(
            mode("huge", &o),
            Ok(Mode::HugeBody {
                bytes: 1 << 20,
                chunk: 4096,
                pause: Duration::ZERO
            })
        );
        assert_eq!(parse(args("--help")), Ok(None));
        assert_eq!(parse(args("")), Ok(Some(Options::default())));
    }

    #[test]
    fn errors_name_the_value_and_the_fix() {
        let e = parse(args("--cycle 30x")).expect_err("bad unit");
        assert!(e.contains("\"30x\"") && e.contains("30s"), "{e}");
        let e = parse(args("--cycle 0s")).expect_err("zero");
        assert!(e.contains("longer than zero"), "{e}");
        let e = parse(args("--modes hang,sleepy")).expect_err("unknown mode");
        assert!(e.contains("\"sleepy\"") && e.contains("refuse,500"), "{e}");
        let e = parse(args("--huge 3TB")).expect_err("bad size");
        assert!(e.contains("200MiB"), "{e}");
        let e = parse(args("--port")).expect_err("no value");
        assert!(e.contains("needs a value"), "{e}");
    }
}
