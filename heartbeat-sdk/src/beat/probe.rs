//! Reads the facts a row carries about a process: pid, memory, CPU.

use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

/// What one sample says about the reported process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessSample {
    /// The process id reported as `pid`.
    pub pid: Option<u32>,
    /// Resident memory in bytes.
    pub memory_rss_bytes: Option<u64>,
    /// CPU since the previous sample, percent of one core.
    pub cpu_percent: Option<f32>,
}

/// Samples a process on every beat. The SDK samples its own process; the
/// sidecar samples its child's whole tree.
pub trait ProcessProbe: Send + 'static {
    /// Takes one sample; called from the beat thread, never from the worker's.
    fn sample(&mut self) -> ProcessSample;
}

fn kind() -> ProcessRefreshKind {
    ProcessRefreshKind::nothing().with_memory().with_cpu()
}

/// This process, refreshed alone (no scan of every process on the host).
pub struct OwnProcess {
    system: System,
    pid: Pid,
}

impl OwnProcess {
    /// Samples the calling process.
    pub fn new() -> Self {
        OwnProcess {
            system: System::new(),
            pid: Pid::from_u32(std::process::id()),
        }
    }
}

impl Default for OwnProcess {
    fn default() -> Self {
        Self::new()
    }
}

impl ProcessProbe for OwnProcess {
    fn sample(&mut self) -> ProcessSample {
        self.system
            .refresh_processes_specifics(ProcessesToUpdate::Some(&[self.pid]), true, kind());
        let process = self.system.process(self.pid);
        ProcessSample {
            pid: Some(self.pid.as_u32()),
            memory_rss_bytes: process.map(|p| p.memory()),
            cpu_percent: process.map(|p| p.cpu_usage()),
        }
    }
}

/// A process and all its descendants, summed (Node workers spawn helpers).
pub struct ProcessTree {
    system: System,
    root: Pid,
    last: ProcessSample,
    born: std::time::Instant,
}

/// A process this young is still loading: its memory would mislead (a Node
/// worker shows 16 KiB before it has mapped anything).
const SETTLING: std::time::Duration = std::time::Duration::from_secs(1);

impl ProcessTree {
    /// Samples `root` and everything it spawned.
    pub fn new(root: u32) -> Self {
        let last = ProcessSample {
            pid: Some(root),
            ..Default::default()
        };
        ProcessTree {
            system: System::new(),
            root: Pid::from_u32(root),
            last,
            born: std::time::Instant::now(),
        }
    }
}

impl ProcessTree {
    /// The root and its descendants, from `/proc/<pid>/task/<tid>/children`
    /// (Linux 3.5+); `None` where the kernel does not provide those files.
    fn descendants(&self) -> Option<Vec<Pid>> {
        let root = self.root.as_u32();
        // A thread that exits mid-walk loses its file too: only the root's
        // main thread tells whether the kernel has these files at all.
        if std::fs::metadata(format!("/proc/{root}/task/{root}/children")).is_err()
            && std::path::Path::new(&format!("/proc/{root}")).exists()
        {
            return None;
        }
        let mut tree = vec![self.root];
        let mut i = 0;
        while i < tree.len() && tree.len() < 10_000 {
            let tasks = std::fs::read_dir(format!("/proc/{}/task", tree[i].as_u32()));
            for task in tasks.into_iter().flatten().flatten() {
                let Ok(children) = std::fs::read_to_string(task.path().join("children")) else {
                    continue;
                };
                tree.extend(
                    children
                        .split_whitespace()
                        .filter_map(|p| p.parse().ok())
                        .map(Pid::from_u32),
                );
            }
            i += 1;
        }
        Some(tree)
    }
}

impl ProcessProbe for ProcessTree {
    fn sample(&mut self) -> ProcessSample {
        // Only the worker's own tree is read: no scan of the host's processes.
        let tree = match self.descendants() {
            Some(tree) => {
                self.system.refresh_processes_specifics(
                    ProcessesToUpdate::Some(&tree),
                    true,
                    kind(),
                );
                tree
            }
            None => {
                self.system
                    .refresh_processes_specifics(ProcessesToUpdate::All, true, kind());
                let processes = self.system.processes();
                let mut tree = vec![self.root];
                let mut i = 0;
                while i < tree.len() {
                    let parent = tree[i];
                    tree.extend(
                        processes
                            .iter()
                            .filter(|(_, p)| {
                                p.parent() == Some(parent) && p.thread_kind().is_none()
                            })
                            .map(|(pid, _)| *pid),
                    );
                    i += 1;
                }
                tree
            }
        };
        let processes = self.system.processes();
        if !processes.contains_key(&self.root) {
            // Gone (the final row): the last memory seen is what explains an
            // out-of-memory end; it no longer uses any CPU.
            return ProcessSample {
                cpu_percent: Some(0.0),
                ..self.last
            };
        }
        let (mut memory, mut cpu) = (0u64, 0f32);
        for pid in &tree {
            if let Some(p) = processes.get(pid) {
                memory += p.memory();
                cpu += p.cpu_usage();
            }
        }
        // Forget processes that left the tree (sysinfo keeps what it saw).
        let keep: std::collections::HashSet<Pid> = tree.iter().copied().collect();
        let gone: Vec<Pid> = processes
            .keys()
            .filter(|p| !keep.contains(p))
            .copied()
            .collect();
        if !gone.is_empty() {
            self.system.refresh_processes_specifics(
                ProcessesToUpdate::Some(&gone),
                true,
                ProcessRefreshKind::nothing(),
            );
        }
        self.last = ProcessSample {
            pid: Some(self.root.as_u32()),
            memory_rss_bytes: Some(memory),
            cpu_percent: Some(cpu),
        };
        if self.born.elapsed() < SETTLING {
            return ProcessSample {
                pid: Some(self.root.as_u32()),
                ..ProcessSample::default()
            };
        }
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_walk_finds_a_child_and_samples_it() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("sleep");
        let tree = ProcessTree::new(std::process::id())
            .descendants()
            .unwrap_or_default();
        let mut probe = ProcessTree::new(child.id());
        probe.born -= SETTLING;
        let alone = probe.sample();
        let _ = child.kill();
        let _ = child.wait();
        assert!(tree.contains(&Pid::from_u32(child.id())), "{tree:?}");
        assert_eq!(alone.pid, Some(child.id()));
        assert!(alone.memory_rss_bytes.unwrap_or(0) > 0, "{alone:?}");
    }

    #[test]
    fn a_child_still_loading_reports_no_memory_yet() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("sleep");
        let first = ProcessTree::new(child.id()).sample();
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(first.pid, Some(child.id()));
        assert_eq!(first.memory_rss_bytes, None, "{first:?}");
    }

    #[test]
    fn own_process_has_memory() {
        let s = OwnProcess::new().sample();
        assert_eq!(s.pid, Some(std::process::id()));
        assert!(s.memory_rss_bytes.unwrap_or(0) > 1024 * 1024, "{s:?}");
    }
}
