//! How many NVIDIA GPUs this node offers, found without loading any CUDA library: the
//! launcher must start (and report clearly) on machines where CUDA is absent or broken.
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Result};

/// GPUs that workers on this node can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuCount {
    /// GPUs the driver reports.
    pub physical: usize,
    /// Entries of CUDA_VISIBLE_DEVICES when it is set (SLURM sets it for --gres=gpu);
    /// `cuda:i` then means the i-th visible device.
    pub visible: Option<usize>,
}

impl GpuCount {
    /// Probes the driver (/proc/driver/nvidia/gpus, else `nvidia-smi -L`) and reads
    /// CUDA_VISIBLE_DEVICES.
    pub fn probe() -> Self {
        let physical = count_proc_entries(Path::new("/proc/driver/nvidia/gpus")).unwrap_or_else(count_nvidia_smi);
        GpuCount { physical, visible: std::env::var("CUDA_VISIBLE_DEVICES").ok().map(|v| count_visible(&v)) }
    }

    /// How many workers can each have a GPU of their own.
    pub fn usable(&self) -> usize {
        self.visible.map_or(self.physical, |v| v.min(self.physical))
    }

    /// Fails with one line when `wanted` workers cannot each get a GPU.
    pub fn check(&self, wanted: usize) -> Result<()> {
        if wanted == 0 {
            bail!("--gpus 0 starts no worker; use --gpus N with N >= 1, or --nproc N for CPU workers");
        }
        if wanted <= self.usable() {
            return Ok(());
        }
        let have = match self.physical {
            0 => "no NVIDIA GPUs".to_string(),
            1 => "1 NVIDIA GPU".to_string(),
            n => format!("{n} NVIDIA GPUs"),
        };
        match self.visible {
            Some(v) if v < self.physical => bail!(
                "--gpus {wanted} but CUDA_VISIBLE_DEVICES makes only {v} of this machine's {have} visible; \
                 lower --gpus or widen CUDA_VISIBLE_DEVICES"
            ),
            _ if self.physical == 0 => {
                bail!("--gpus {wanted} but this machine has {have}; use --nproc N for CPU workers")
            }
            _ => bail!("--gpus {wanted} but this machine has {have}; use --gpus {} or fewer", self.usable()),
        }
    }
}

/// One directory per GPU (named by PCI address) while the nvidia driver is loaded.
fn count_proc_entries(dir: &Path) -> Option<usize> {
    let entries = std::fs::read_dir(dir).ok()?;
    Some(entries.filter_map(|e| e.ok()).count())
}

/// `nvidia-smi -L` prints one "GPU i: ..." line per device; 0 when it is absent or fails.
fn count_nvidia_smi() -> usize {
    let out = Command::new("nvidia-smi").arg("-L").stdin(Stdio::null()).stderr(Stdio::null()).output();
    match out {
        Ok(out) if out.status.success() => {
            String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.trim_start().starts_with("GPU ")).count()
        }
        _ => 0,
    }
}

/// "0,1,3" → 3; "" → 0 (CUDA treats an empty list as no device). CUDA stops at the first
/// invalid entry, but telling valid from invalid needs the driver, so count them all.
fn count_visible(list: &str) -> usize {
    list.split(',').filter(|s| !s.trim().is_empty()).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_many_gpus_is_one_line_naming_what_exists() {
        let two = GpuCount { physical: 2, visible: None };
        assert!(two.check(2).is_ok());
        let msg = two.check(8).expect_err("8 > 2").to_string();
        assert!(msg.starts_with("--gpus 8 but this machine has 2 NVIDIA GPUs"), "{msg}");
        let msg = GpuCount { physical: 0, visible: None }.check(1).expect_err("none").to_string();
        assert!(msg.contains("no NVIDIA GPUs") && msg.contains("--nproc"), "{msg}");
        let msg = GpuCount { physical: 8, visible: Some(2) }.check(4).expect_err("hidden").to_string();
        assert!(msg.contains("CUDA_VISIBLE_DEVICES makes only 2 of this machine's 8"), "{msg}");
        assert!(GpuCount { physical: 8, visible: Some(2) }.check(0).is_err());
    }

    #[test]
    fn visible_device_lists() {
        assert_eq!(count_visible("0,1,3"), 3);
        assert_eq!(count_visible(""), 0);
        assert_eq!(count_visible("GPU-1234"), 1);
        assert_eq!(count_proc_entries(Path::new("/nonexistent/gpus")), None);
    }
}
