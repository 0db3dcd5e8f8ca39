//! Start-up checks that turn obscure runtime failures into actionable
//! messages: enough cores, io_uring available, locked memory for glommio's
//! registered buffers, and a data directory that supports `O_DIRECT`.

use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::device::BLOCK_SIZE;

/// glommio's per-executor IO memory (its default), which it locks.
pub const IO_MEMORY_BYTES: usize = 10 << 20;

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error(
        "--cores {requested} asked for more cores than the {available} this process may run on"
    )]
    TooManyCores { requested: usize, available: usize },
    #[error(
        "io_uring is not available ({0}); Cairn needs Linux 5.8 or later with io_uring enabled: \
         check the kernel.io_uring_disabled sysctl and your container's seccomp profile"
    )]
    IoUring(String),
    #[error(
        "the locked-memory limit is {limit_bytes} bytes but {cores} cores need about {needed_bytes}; \
         raise it with `ulimit -l {needed_kib}` (or LimitMEMLOCK= in a systemd unit), or run with CAP_IPC_LOCK"
    )]
    MemlockTooLow {
        limit_bytes: u64,
        cores: usize,
        needed_bytes: u64,
        needed_kib: u64,
    },
    #[error("data directory {dir}: {message}")]
    DataDir { dir: PathBuf, message: String },
    #[error(
        "data directory {dir} does not support O_DIRECT ({message}); put it on a local file system \
         such as ext4 or xfs (not tmpfs, overlayfs or a network mount)"
    )]
    NoDirectIo { dir: PathBuf, message: String },
}

/// What the checks found, for the start-up log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreflightReport {
    pub cores_available: usize,
    pub memlock_limit_bytes: Option<u64>,
}

/// Runs every check for a node with `cores` shards storing under `data_dir`.
pub fn preflight(data_dir: &Path, cores: usize) -> Result<PreflightReport, PreflightError> {
    let cores_available = core_affinity::get_core_ids().map_or(0, |ids| ids.len());
    if cores == 0 || cores > cores_available {
        return Err(PreflightError::TooManyCores {
            requested: cores,
            available: cores_available,
        });
    }
    io_uring::IoUring::new(8).map_err(|e| PreflightError::IoUring(e.to_string()))?;
    let memlock_limit_bytes = check_memlock(cores)?;
    check_direct_io(data_dir)?;
    Ok(PreflightReport {
        cores_available,
        memlock_limit_bytes,
    })
}

fn check_memlock(cores: usize) -> Result<Option<u64>, PreflightError> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and nothing else.
    let status = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) };
    if status != 0 || limit.rlim_cur == libc::RLIM_INFINITY {
        return Ok(None);
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let needed_bytes = (cores * 3 * IO_MEMORY_BYTES) as u64;
    if !root && limit.rlim_cur < needed_bytes {
        return Err(PreflightError::MemlockTooLow {
            limit_bytes: limit.rlim_cur,
            cores,
            needed_bytes,
            needed_kib: needed_bytes / 1024,
        });
    }
    Ok(Some(limit.rlim_cur))
}

fn check_direct_io(dir: &Path) -> Result<(), PreflightError> {
    let data_dir_error = |e: std::io::Error| PreflightError::DataDir {
        dir: dir.to_owned(),
        message: e.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(data_dir_error)?;
    let probe = dir.join(".cairn-direct-io-probe");
    let result = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&probe)
        .and_then(|file| {
            // An aligned block inside an over-allocated buffer.
            let buffer = vec![0u8; 2 * BLOCK_SIZE];
            let start = buffer.as_ptr().align_offset(BLOCK_SIZE);
            file.write_all_at(&buffer[start..start + BLOCK_SIZE], 0)?;
            file.sync_data()
        });
    let _ = std::fs::remove_file(&probe);
    result.map_err(|e| PreflightError::NoDirectIo {
        dir: dir.to_owned(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asking_for_too_many_cores_is_explained() {
        let dir = tempfile::tempdir().unwrap();
        let error = preflight(dir.path(), 10_000).unwrap_err();
        assert!(matches!(
            error,
            PreflightError::TooManyCores {
                requested: 10_000,
                ..
            }
        ));
        assert!(error.to_string().contains("more cores"));
    }

    #[test]
    fn an_unwritable_data_directory_is_explained() {
        let error = check_direct_io(Path::new("/proc/cairn-cannot-be-here")).unwrap_err();
        assert!(matches!(error, PreflightError::DataDir { .. }), "{error}");
    }
}
