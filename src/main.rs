//! The `fleetgroups` binary: parses the command line and runs it (see `cli.rs`).

fn main() -> std::process::ExitCode {
    malloc::fix_mmap_threshold();
    fleetgroups::cli::main()
}

/// glibc's malloc, set once before anything else runs.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod malloc {
    /// glibc's own starting value. Setting it turns off the dynamic threshold
    /// (mallopt(3)): by default the first free of an mmapped block raises the threshold
    /// to that block's size, up to 32 MiB, and from then on such blocks come from the
    /// arenas, which keep them resident after they are freed. sled allocates a 512 KiB
    /// log buffer at every flush (one per group commit) and frees it once written, so
    /// under writes the arenas filled with those buffers. Fixed, every block of
    /// 128 KiB or more is its own mapping, unmapped on free (and so is the 19 MiB argon2
    /// buffer, see `auth/hashing.rs`).
    ///
    /// Measured on the 2-core machine (issue 10; release build, the argon2 buffer
    /// already given back when idle; VmHWM, medians of 2 side-by-side runs): peak RSS
    /// while seeding 100,000 groups over HTTP 102 -> 75 MiB, under the POST benchmark
    /// (3 x 5 s at -c64) 93 -> 71 MiB. Idle RSS (8.4 MiB), POST throughput and the
    /// seeding rate did not change beyond the noise.
    const MMAP_THRESHOLD: libc::c_int = 128 * 1024;

    // The one `unsafe` of the crate (`unsafe_code` is denied everywhere else): a call
    // into the C library that only sets a malloc parameter.
    #[allow(unsafe_code)]
    pub fn fix_mmap_threshold() {
        // SAFETY: mallopt takes no pointers and is safe to call at any time; it runs
        // here before any other thread exists. A refusal (0) leaves glibc's default.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod malloc {
    pub fn fix_mmap_threshold() {}
}
