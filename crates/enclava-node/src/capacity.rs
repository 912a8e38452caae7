//! What a host can really give, measured rather than declared (GPUX asks hosts to be honest about
//! their hardware; its peers only self-report): usable cores (CPU affinity and the cgroup's CPU
//! quota), memory (the machine's and the cgroup's limit), free disk where the node keeps its data,
//! and the GPUs the host can actually see (NVIDIA through `nvidia-smi` when present; otherwise
//! none, never a guess). Each figure says how it was measured. An [`Offer`] (`cpu=2,memory=4GiB`)
//! is accepted only within what was measured: a host does not sell what it does not have.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// A GPU the host can see.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gpu {
    pub name: String,
    pub memory_bytes: u64,
}

/// A capacity snapshot, each figure with how it was found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Capacity {
    /// Usable cores (fractional under a CPU quota).
    pub cores: f64,
    pub cores_how: String,
    pub memory_bytes: u64,
    pub memory_how: String,
    /// Free bytes on the data folder's filesystem.
    pub disk_bytes: u64,
    pub disk_how: String,
    pub gpus: Vec<Gpu>,
    pub gpus_how: String,
}

/// Measures this host, with `data_dir` the folder whose filesystem holds job data.
pub fn measure(data_dir: &Path) -> Capacity {
    let memberships = read("/proc/self/cgroup").unwrap_or_default();
    let v2_dirs = cgroup_dirs(&memberships, None);
    let affinity = read("/proc/self/status")
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:").and_then(cpu_list_count)))
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
        as f64;
    // The smallest quota on the way from this process's cgroup up to the root.
    let v2_quota = v2_dirs
        .iter()
        .filter_map(|d| read_path(&d.join("cpu.max")).and_then(|s| cgroup_v2_cpu(&s)))
        .map(|q| (q, "cgroup v2 cpu.max"));
    let v1_quota = cgroup_dirs(&memberships, Some("cpu"))
        .into_iter()
        .filter_map(|d| {
            let quota = read_path(&d.join("cpu.cfs_quota_us"))?;
            let period = read_path(&d.join("cpu.cfs_period_us"))?;
            cgroup_v1_cpu(&quota, &period)
        })
        .map(|q| (q, "cgroup v1 cpu.cfs_quota_us"));
    let quota = v2_quota.chain(v1_quota).min_by(|a, b| a.0.total_cmp(&b.0));
    let (cores, cores_how) = match quota {
        Some((q, how)) if q < affinity => (q, format!("{how} quota (CPU affinity allows {affinity})")),
        _ => (affinity, "CPU affinity (Cpus_allowed_list); no lower cgroup quota up the tree".into()),
    };

    let total = read("/proc/meminfo").and_then(|s| meminfo_total(&s));
    let v2_limit = v2_dirs
        .iter()
        .filter_map(|d| read_path(&d.join("memory.max")).and_then(|s| cgroup_memory(&s)))
        .map(|l| (l, "cgroup v2 memory.max"));
    let v1_limit = cgroup_dirs(&memberships, Some("memory"))
        .into_iter()
        .filter_map(|d| read_path(&d.join("memory.limit_in_bytes")).and_then(|s| cgroup_memory(&s)))
        .map(|l| (l, "cgroup v1 memory.limit_in_bytes"));
    let limit = v2_limit.chain(v1_limit).min_by_key(|l| l.0);
    let (memory_bytes, memory_how) = match (total, limit) {
        (Some(t), Some((l, how))) if l < t => (l, format!("{how} (the machine has {} MiB)", t >> 20)),
        (Some(t), _) => (t, "MemTotal in /proc/meminfo; no lower cgroup limit up the tree".into()),
        (None, Some((l, how))) => (l, how.into()),
        (None, None) => (0, "unknown: /proc/meminfo is not readable".into()),
    };

    let (disk_bytes, disk_how) = match free_disk(data_dir) {
        Ok(b) => (b, format!("free space on the filesystem of {} (df)", data_dir.display())),
        Err(e) => (0, format!("unknown: {e}")),
    };

    let (gpus, gpus_how) = match std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=name,memory.total", "--format=csv,noheader,nounits"])
        .output()
    {
        Ok(out) if out.status.success() => {
            (parse_nvidia_smi(&String::from_utf8_lossy(&out.stdout)), "nvidia-smi --query-gpu".into())
        }
        Ok(out) => (vec![], format!("none: nvidia-smi failed ({})", out.status)),
        Err(_) => (vec![], "none: no NVIDIA driver (nvidia-smi not found); other GPUs are not detected".into()),
    };
    Capacity { cores, cores_how, memory_bytes, memory_how, disk_bytes, disk_how, gpus, gpus_how }
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

fn read_path(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// The folders of this process's cgroup and of each ancestor up to the root, for cgroup v2
/// (`controller` `None`) or for a v1 controller's hierarchy, from `/proc/self/cgroup`.
fn cgroup_dirs(memberships: &str, controller: Option<&str>) -> Vec<std::path::PathBuf> {
    let line = memberships.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        match controller {
            None => (controllers.is_empty()).then(|| ("/sys/fs/cgroup".to_owned(), path)),
            Some(c) => controllers.split(',').any(|x| x == c).then(|| (format!("/sys/fs/cgroup/{controllers}"), path)),
        }
    });
    let Some((mount, path)) = line else { return Vec::new() };
    let mut dirs = Vec::new();
    let mut here = Path::new(path);
    loop {
        let rel = here.strip_prefix("/").unwrap_or(here);
        if rel.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
            break;
        }
        dirs.push(Path::new(&mount).join(rel));
        match here.parent() {
            Some(p) if here != Path::new("/") => here = p,
            _ => break,
        }
    }
    dirs
}

/// `0-3,8,10-11` → 7.
fn cpu_list_count(list: &str) -> Option<usize> {
    let mut n = 0usize;
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        n += match part.split_once('-') {
            Some((a, b)) => b.trim().parse::<usize>().ok()?.checked_sub(a.trim().parse::<usize>().ok()?)? + 1,
            None => {
                part.trim().parse::<usize>().ok()?;
                1
            }
        };
    }
    (n > 0).then_some(n)
}

/// `cpu.max`: `max 100000` (no quota) or `QUOTA PERIOD`.
fn cgroup_v2_cpu(text: &str) -> Option<f64> {
    let mut it = text.split_whitespace();
    let quota: f64 = it.next()?.parse().ok()?;
    let period: f64 = it.next()?.parse().ok()?;
    (quota > 0.0 && period > 0.0).then(|| quota / period)
}

/// `cpu.cfs_quota_us` (-1 for none) over `cpu.cfs_period_us`.
fn cgroup_v1_cpu(quota: &str, period: &str) -> Option<f64> {
    let q: f64 = quota.trim().parse().ok()?;
    let p: f64 = period.trim().parse().ok()?;
    (q > 0.0 && p > 0.0).then(|| q / p)
}

/// `memory.max` (`max` for none) or v1's limit (a huge number for none).
fn cgroup_memory(text: &str) -> Option<u64> {
    let v: u64 = text.trim().parse().ok()?;
    (v < 1 << 60).then_some(v)
}

fn meminfo_total(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

fn parse_nvidia_smi(text: &str) -> Vec<Gpu> {
    text.lines()
        .filter_map(|l| {
            let (name, mib) = l.rsplit_once(',')?;
            let mib: u64 = mib.trim().parse().ok()?;
            Some(Gpu { name: name.trim().to_owned(), memory_bytes: mib.checked_mul(1 << 20)? })
        })
        .collect()
}

fn free_disk(dir: &Path) -> Result<u64, String> {
    let out = std::process::Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(dir)
        .output()
        .map_err(|e| format!("df does not run: {e}"))?;
    if !out.status.success() {
        return Err(format!("df {} failed", dir.display()));
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| "df's answer is not a number".into())
}

/// What a host offers (`cpu=2,memory=4GiB,disk=10GiB,gpus=1`); absent parts offer nothing of it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Offer {
    pub cores: f64,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
    pub gpus: usize,
}

impl Offer {
    /// Parses `key=value,...` with sizes in bytes or with KiB/MiB/GiB/TiB (or KB/MB/GB/TB).
    pub fn parse(text: &str) -> Result<Offer, String> {
        let mut offer = Offer::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) =
                part.split_once('=').ok_or_else(|| format!("{} is not key=value", enclava_core::text::quote(part)))?;
            match key.trim() {
                "cpu" | "cpus" | "cores" => {
                    offer.cores =
                        value.trim().parse().ok().filter(|c: &f64| c.is_finite() && *c > 0.0).ok_or_else(|| {
                            format!("cpu={} is not a positive number", enclava_core::text::quote(value))
                        })?
                }
                "memory" | "mem" => offer.memory_bytes = parse_size(value)?,
                "disk" => offer.disk_bytes = parse_size(value)?,
                "gpu" | "gpus" => {
                    offer.gpus = value
                        .trim()
                        .parse()
                        .map_err(|_| format!("gpus={} is not a count", enclava_core::text::quote(value)))?
                }
                other => {
                    return Err(format!(
                        "unknown resource {} (offer cpu, memory, disk or gpus; bandwidth is measured, not offered)",
                        enclava_core::text::quote(other)
                    ));
                }
            }
        }
        Ok(offer)
    }

    /// Accepts the offer only within what was measured, or says everything it exceeds.
    pub fn within(&self, measured: &Capacity) -> Result<(), String> {
        let mut over = Vec::new();
        if self.cores > measured.cores + 1e-9 {
            over.push(format!(
                "cpu={} but {} usable cores were measured ({})",
                self.cores, measured.cores, measured.cores_how
            ));
        }
        if self.memory_bytes > measured.memory_bytes {
            over.push(format!(
                "memory={} MiB but {} MiB were measured ({})",
                self.memory_bytes >> 20,
                measured.memory_bytes >> 20,
                measured.memory_how
            ));
        }
        if self.disk_bytes > measured.disk_bytes {
            over.push(format!(
                "disk={} MiB but {} MiB are free ({})",
                self.disk_bytes >> 20,
                measured.disk_bytes >> 20,
                measured.disk_how
            ));
        }
        if self.gpus > measured.gpus.len() {
            over.push(format!("gpus={} but {} were found ({})", self.gpus, measured.gpus.len(), measured.gpus_how));
        }
        if over.is_empty() { Ok(()) } else { Err(format!("the offer exceeds what this host has: {}", over.join("; "))) }
    }
}

/// `4GiB`, `512MiB`, `10GB`, `1048576`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("{} is not a size", enclava_core::text::quote(t)))?;
    let mult: f64 = match unit.trim() {
        "" | "B" => 1.0,
        "KiB" | "K" => 1024.0,
        "MiB" | "M" => 1024.0 * 1024.0,
        "GiB" | "G" => 1024.0 * 1024.0 * 1024.0,
        "TiB" | "T" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        u => return Err(format!("unknown size unit {} (use KiB, MiB, GiB, TiB)", enclava_core::text::quote(u))),
    };
    let bytes = n * mult;
    if !(0.0..=1e18).contains(&bytes) {
        return Err(format!("{} is out of range", enclava_core::text::quote(t)));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_and_proc_files_are_read_as_the_kernel_writes_them() {
        assert_eq!(cgroup_v2_cpu("max 100000\n"), None);
        assert_eq!(cgroup_v2_cpu("150000 100000\n"), Some(1.5));
        assert_eq!(cgroup_v1_cpu("-1\n", "100000\n"), None);
        assert_eq!(cgroup_v1_cpu("200000\n", "100000\n"), Some(2.0));
        assert_eq!(cgroup_memory("max\n"), None);
        assert_eq!(cgroup_memory("9223372036854771712\n"), None, "v1's 'no limit'");
        assert_eq!(cgroup_memory("4294967296\n"), Some(4 << 30));
        let meminfo = "MemTotal:       24576000 kB\nMemFree:         1000 kB\n";
        assert_eq!(meminfo_total(meminfo), Some(24576000 * 1024));
        assert_eq!(meminfo_total("garbage"), None);
        assert_eq!(cpu_list_count("0-1\n"), Some(2));
        assert_eq!(cpu_list_count("0-3,8,10-11"), Some(7));
        assert_eq!(cpu_list_count("3-1"), None);
        let groups = "4:memory:/a/b\n1:cpu,cpuacct:/c\n0::/d/e\n";
        assert_eq!(
            cgroup_dirs(groups, Some("memory")),
            ["/sys/fs/cgroup/memory/a/b", "/sys/fs/cgroup/memory/a", "/sys/fs/cgroup/memory"]
                .map(std::path::PathBuf::from)
        );
        assert_eq!(
            cgroup_dirs(groups, Some("cpu")),
            ["/sys/fs/cgroup/cpu,cpuacct/c", "/sys/fs/cgroup/cpu,cpuacct"].map(std::path::PathBuf::from)
        );
        assert_eq!(
            cgroup_dirs(groups, None),
            ["/sys/fs/cgroup/d/e", "/sys/fs/cgroup/d", "/sys/fs/cgroup"].map(std::path::PathBuf::from)
        );
        assert!(cgroup_dirs("0::/../x\n", None).is_empty(), "no climbing out of the hierarchy");
        let smi = "NVIDIA H100 80GB HBM3, 81559\nNVIDIA A10, 23028\nnot a line\n";
        assert_eq!(
            parse_nvidia_smi(smi),
            [
                Gpu { name: "NVIDIA H100 80GB HBM3".into(), memory_bytes: 81559 << 20 },
                Gpu { name: "NVIDIA A10".into(), memory_bytes: 23028 << 20 }
            ]
        );
    }

    #[test]
    fn this_host_is_measured_without_guessing() {
        let c = measure(Path::new("."));
        assert!(c.cores > 0.0 && c.cores <= std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64);
        assert!(c.memory_bytes > 0, "{}", c.memory_how);
        assert!(c.disk_bytes > 0, "{}", c.disk_how);
        if c.gpus.is_empty() {
            assert!(c.gpus_how.starts_with("none"), "{}", c.gpus_how);
        }
    }

    #[test]
    fn an_offer_is_accepted_only_within_what_was_measured() {
        let measured = Capacity {
            cores: 2.0,
            cores_how: "affinity".into(),
            memory_bytes: 8 << 30,
            memory_how: "meminfo".into(),
            disk_bytes: 100 << 30,
            disk_how: "df".into(),
            gpus: vec![],
            gpus_how: "none".into(),
        };
        let ok = Offer::parse("cpu=2,memory=4GiB,disk=10GiB").expect("parses");
        assert_eq!((ok.cores, ok.memory_bytes, ok.disk_bytes, ok.gpus), (2.0, 4 << 30, 10 << 30, 0));
        ok.within(&measured).expect("within");
        let e = Offer::parse("cpu=8,memory=16GiB,gpus=1").expect("parses").within(&measured).expect_err("over");
        assert!(
            e.contains("cpu=8 but 2 usable cores") && e.contains("memory=16384 MiB") && e.contains("gpus=1"),
            "{e}"
        );
        for bad in ["cpu=-1", "cpu=lots", "memory=4XB", "bandwidth=1G", "nonsense", "gpus=1.5"] {
            assert!(Offer::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("10GB"), Ok(10_000_000_000));
        assert!(parse_size("1e30").is_err());
    }
}
