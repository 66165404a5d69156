//! Keeping freed tensor memory for reuse.
//!
//! Every training step allocates and frees the same large tensors. glibc's
//! default allocator serves blocks above 128 KiB with fresh `mmap`s and hands
//! freed memory straight back to the kernel, so each step pays for page
//! faults and kernel locks again (about 10% of a CPU step of the `tiny`
//! model, measured with `examples/train_speed`). [`keep_freed_memory`] raises
//! those thresholds so the process keeps and reuses what it freed. It is a
//! process-wide setting, so binaries call it, never the library itself.

/// Makes glibc's allocator keep freed memory (up to 1 GiB) for reuse rather
/// than return it to the kernel. Does nothing on other platforms. Returns
/// whether the setting took effect.
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const KEEP: libc::c_int = 1 << 30;
        // SAFETY: mallopt only adjusts allocator parameters; it is safe to
        // call at any time, including with other threads allocating.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, KEEP) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, KEEP) == 1
                && libc::mallopt(libc::M_TOP_PAD, 64 << 20) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_accepts_the_settings() {
        assert!(super::keep_freed_memory());
    }
}
