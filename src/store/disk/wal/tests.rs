//! Tests of the write-ahead log on real files: round trips, every torn tail, damage,
//! ENOSPC on a real full tmpfs, and a property test over crash images.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use proptest::prelude::*;
use tempfile::TempDir;

use super::*;

const ENOSPC: i32 = 28;

fn options(segment: u64) -> LogOptions {
    LogOptions {
        segment_bytes: segment,
        max_spares: 2,
    }
}

fn open(dir: &Path, segment: u64) -> Recovered {
    match Log::open(dir, options(segment)) {
        Ok(r) => r,
        Err(e) => panic!("open {}: {e}", dir.display()),
    }
}

fn payload(seq: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seq as usize).wrapping_mul(31).wrapping_add(i * 7) as u8 ^ 0x5a)
        .collect()
}

/// Where one append's bytes went.
#[derive(Debug, Clone)]
struct Written {
    path: PathBuf,
    /// Where the pwrite began (0 when the frame started a segment).
    write_start: u64,
    frame_start: u64,
    /// End of the frame without its padding.
    frame_end: u64,
    /// End of the pwrite (padding included).
    write_end: u64,
}

fn active_place(log: &Log) -> Option<(PathBuf, u64)> {
    log.active
        .as_ref()
        .map(|a| (a.path.clone(), log.active_end))
}

fn append(log: &mut Log, frames: &mut Vec<Frame>, span: u64, len: usize) -> Written {
    let first = log.last() + 1;
    let last = first + span - 1;
    let body = payload(first, len);
    let before = active_place(log);
    if let Err(e) = log.append(first, last, &body) {
        panic!("append {first}..={last}: {e}");
    }
    frames.push(Frame {
        first,
        last,
        payload: body,
    });
    let (path, end) = active_place(log).expect("an active segment after an append");
    let write_start = match before {
        Some((p, e)) if p == path => e,
        _ => 0,
    };
    let frame_start = if write_start == 0 {
        SEGMENT_HEADER
    } else {
        write_start
    };
    Written {
        path,
        write_start,
        frame_start,
        frame_end: frame_start + FRAME_HEADER + len as u64,
        write_end: end,
    }
}

fn after(frames: &[Frame], checkpoint: u64) -> Vec<Frame> {
    frames
        .iter()
        .filter(|f| f.last > checkpoint)
        .cloned()
        .collect()
}

fn segment_files(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .expect("list the log directory")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| n != CHECKPOINT_FILE)
        .collect()
}

fn copy_dir(from: &Path) -> TempDir {
    let to = TempDir::new().expect("tempdir");
    for entry in fs::read_dir(from).expect("list") {
        let entry = entry.expect("entry");
        fs::copy(entry.path(), to.path().join(entry.file_name())).expect("copy");
    }
    to
}

fn write_at(path: &Path, off: u64, bytes: &[u8]) {
    let f = open_rw(path).expect("open for writing");
    f.write_all_at(bytes, off).expect("write");
}

fn flip(path: &Path, off: u64) {
    let mut bytes = read_all(path);
    bytes[off as usize] ^= 0x10;
    fs::write(path, &bytes).expect("write");
}

fn read_all(path: &Path) -> Vec<u8> {
    fs::read(path).expect("read")
}

fn damaged(result: Result<Recovered, LogError>) -> String {
    match result {
        Err(LogError::Damaged(message)) => message,
        Err(e) => panic!("expected Damaged, got {e}"),
        Ok(r) => panic!(
            "expected Damaged, the log opened with {} frames",
            r.frames.len()
        ),
    }
}

/// Appends `n` frames of varied sizes; returns them and where each went.
fn fill(log: &mut Log, n: usize, frames: &mut Vec<Frame>) -> Vec<Written> {
    (0..n)
        .map(|i| append(log, frames, 1 + (i as u64 % 3), 20 + (i * 97) % 700))
        .collect()
}

/// A closed log in a new directory holding `n` frames from `fill`.
fn filled_log(segment: u64, n: usize) -> (TempDir, Vec<Frame>, Vec<Written>) {
    let dir = TempDir::new().expect("tempdir");
    let mut r = open(dir.path(), segment);
    let mut frames = Vec::new();
    let written = fill(&mut r.log, n, &mut frames);
    (dir, frames, written)
}

#[test]
fn round_trip_across_segments_and_recycling() {
    let dir = TempDir::new().expect("tempdir");
    let segment = 4096;
    let mut r = open(dir.path(), segment);
    assert_eq!((r.checkpoint, r.frames.len(), r.log.last()), (0, 0, 0));
    let mut frames = Vec::new();
    let written = fill(&mut r.log, 40, &mut frames);
    let used: BTreeSet<_> = written.iter().map(|w| w.path.clone()).collect();
    assert!(
        used.len() >= 3,
        "40 frames span {} segments, want >= 3",
        used.len()
    );
    drop(r);
    let mut r = open(dir.path(), segment);
    assert_eq!(r.frames, frames);
    assert_eq!(r.log.last(), frames.last().map_or(0, |f| f.last));

    // Many checkpoints: segments are recycled, so the set of files ever used stays small.
    let mut names_seen = BTreeSet::new();
    let mut checkpoint = 0;
    for round in 0..60 {
        fill(&mut r.log, 12, &mut frames);
        if round % 2 == 0 {
            // Checkpoint behind the last frame: the frames after it stay in the log.
            checkpoint = frames[frames.len() - 4].last;
        } else {
            checkpoint = r.log.last();
        }
        r.log.checkpoint(checkpoint).expect("checkpoint");
        assert_eq!(
            r.log.bytes_since_checkpoint(),
            after(&frames, checkpoint)
                .iter()
                .map(|f| frame_len(f.payload.len() as u64))
                .sum::<u64>()
        );
        let files = segment_files(dir.path());
        assert!(
            files.len() <= 6,
            "round {round}: {} segment files: {files:?}",
            files.len()
        );
        names_seen.extend(files);
        if round % 15 == 14 {
            drop(r);
            r = open(dir.path(), segment);
            assert_eq!(r.checkpoint, checkpoint);
            assert_eq!(r.frames, after(&frames, checkpoint));
        }
    }
    // 720 frames of ~370 bytes is ~65 segments' worth.
    assert!(
        names_seen.len() <= 8,
        "segment files were not recycled: {names_seen:?}"
    );
    drop(r);
    let r = open(dir.path(), segment);
    assert_eq!(r.checkpoint, checkpoint);
    assert_eq!(r.frames, after(&frames, checkpoint));
}

/// Builds a log whose last frame is in the middle of a segment (`new_segment` false) or
/// the first of a new segment, and returns the log dir, the frames and the last write.
fn log_with_last_frame(new_segment: bool) -> (TempDir, Vec<Frame>, Written) {
    let dir = TempDir::new().expect("tempdir");
    let mut r = open(dir.path(), 1024);
    let mut frames = Vec::new();
    append(&mut r.log, &mut frames, 1, 100);
    let last = loop {
        let w = append(&mut r.log, &mut frames, 2, 101);
        if (w.write_start == 0) == new_segment && frames.len() > 3 {
            break w;
        }
    };
    (dir, frames, last)
}

#[test]
fn log_cut_at_every_byte_of_its_last_frame() {
    for new_segment in [false, true] {
        let (dir, frames, last) = log_with_last_frame(new_segment);
        let name = last.path.file_name().expect("name").to_owned();
        let before = &frames[..frames.len() - 1];
        let image = read_all(&last.path);
        for cut in last.write_start..last.frame_end {
            for truncate in [false, true] {
                let copy = copy_dir(dir.path());
                let path = copy.path().join(&name);
                if truncate {
                    let f = open_rw(&path).expect("open");
                    f.set_len(cut).expect("truncate");
                } else {
                    let zeros = vec![0u8; (last.write_end - cut) as usize];
                    write_at(&path, cut, &zeros);
                }
                let what = format!("new segment {new_segment}, cut at {cut}, truncate {truncate}");
                let mut r =
                    Log::open(copy.path(), options(1024)).unwrap_or_else(|e| panic!("{what}: {e}"));
                assert_eq!(r.frames, before, "{what}");
                assert_eq!(r.log.last(), before.last().map_or(0, |f| f.last), "{what}");
                // Appending goes on after the last valid frame.
                let mut expected = before.to_vec();
                append(&mut r.log, &mut expected, 2, 101);
                append(&mut r.log, &mut expected, 1, 7);
                drop(r);
                let r = open(copy.path(), 1024);
                assert_eq!(r.frames, expected, "{what}: after appending");
            }
        }
        // The uncut image holds every frame: the cuts above are what removed the last.
        assert_eq!(read_all(&last.path), image);
        assert_eq!(open(dir.path(), 1024).frames, frames);
    }
}

#[test]
fn flipped_bits_in_the_last_frame_end_the_log() {
    let (dir, frames, last) = log_with_last_frame(false);
    let name = last.path.file_name().expect("name").to_owned();
    let image = read_all(&last.path);
    let header_bits = (last.frame_start * 8)..((last.frame_start + FRAME_HEADER) * 8);
    let payload_bits = ((last.frame_start + FRAME_HEADER) * 8..last.frame_end * 8).step_by(13);
    let mut flipped = 0;
    for bit in header_bits.chain(payload_bits) {
        let copy = copy_dir(dir.path());
        let mut bytes = image.clone();
        bytes[(bit / 8) as usize] ^= 1 << (bit % 8);
        fs::write(copy.path().join(&name), &bytes).expect("write");
        let r = Log::open(copy.path(), options(1024))
            .unwrap_or_else(|e| panic!("bit {bit} flipped: {e}"));
        assert_eq!(r.frames, frames[..frames.len() - 1], "bit {bit} flipped");
        flipped += 1;
    }
    assert!(flipped > 320);
}

#[test]
fn a_zeroed_tail_ends_the_log() {
    let (dir, frames, last) = log_with_last_frame(false);
    let zeros = vec![0u8; (1024 - last.frame_start) as usize];
    write_at(&last.path, last.frame_start, &zeros);
    let r = open(dir.path(), 1024);
    assert_eq!(r.frames, frames[..frames.len() - 1]);
}

/// A log whose first segment was filled, followed by one frame in a second, and then
/// recycled by a checkpoint at its last frame: (dir, log, frames, first write, checkpoint).
fn first_segment_recycled(segment: u64, len: usize) -> (TempDir, Log, Vec<Frame>, Written, u64) {
    let dir = TempDir::new().expect("tempdir");
    let mut r = open(dir.path(), segment);
    let mut frames = Vec::new();
    let first = append(&mut r.log, &mut frames, 1, len);
    while append(&mut r.log, &mut frames, 1, len).path == first.path {}
    let checkpoint = frames[frames.len() - 2].last;
    r.log.checkpoint(checkpoint).expect("checkpoint");
    assert_eq!(r.log.spares.len(), 1, "the first segment is a spare");
    (dir, r.log, frames, first, checkpoint)
}

#[test]
fn an_older_generations_frames_in_the_tail_end_the_log() {
    let (dir, mut log, mut frames, first, checkpoint) = first_segment_recycled(1024, 60);
    // Fill the second; the next frame reuses the first file with a new generation and
    // overwrites only the front of its old frames.
    let second = frames.len();
    loop {
        let w = append(&mut log, &mut frames, 1, 60);
        if w.path == first.path {
            break;
        }
    }
    let reused = log.active.as_ref().expect("active").generation;
    let end = log.active_end;
    drop(log);
    // The tail really holds valid frames of the older generation.
    let f = File::open(&first.path).expect("open");
    let size = f.metadata().expect("meta").len();
    let mut buf = Vec::new();
    let old = read_frame(&f, size, end, salt_of(dir.path()), None, &mut buf)
        .expect("read")
        .expect("an old frame right after the new one");
    assert!(old.generation < reused);
    let r = open(dir.path(), 1024);
    assert_eq!(r.frames, after(&frames, checkpoint));
    assert!(frames.len() > second);

    // An older generation's frame that would even continue the sequences ends it too.
    let salt = salt_of(dir.path());
    let mut forged = Vec::new();
    let next = frames.last().expect("frames").last + 1;
    push_frame(
        &mut forged,
        salt,
        reused - 1,
        next,
        next,
        b"not of this generation",
    );
    write_at(&first.path, end, &forged);
    let r = open(dir.path(), 1024);
    assert_eq!(r.frames, after(&frames, checkpoint));
    assert_eq!(r.log.last(), next - 1);
}

/// A crash while a recycled segment is reused, where only a middle sector of the write
/// reached the disk: the old frames behind it must not pass for damage (the header was
/// zeroed when the segment was recycled, so the old generation is gone with it).
#[test]
fn a_torn_reuse_of_a_recycled_segment_is_not_damage() {
    let (dir, mut log, mut frames, first, checkpoint) = first_segment_recycled(4096, 300);
    let (before, k, write) = loop {
        let before = image(dir.path());
        let k = frames.len();
        let w = append(&mut log, &mut frames, 1, 1500);
        if w.path == first.path {
            break (before, k, w);
        }
    };
    drop(log);
    let name = first
        .path
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    let written = read_all(&write.path);
    let crash = TempDir::new().expect("tempdir");
    for (n, mut bytes) in before {
        if n == name {
            // Only the second sector of the write survived.
            bytes[512..1024].copy_from_slice(&written[512..1024]);
        }
        fs::write(crash.path().join(&n), &bytes).expect("write the crash image");
    }
    let r = Log::open(crash.path(), options(4096)).expect("a torn write is not damage");
    assert_eq!(r.frames, after(&frames[..k], checkpoint));
}

/// A crash after the checkpoint file was replaced but before the segments it frees were
/// recycled: open recycles them, and their generations are never handed out again.
#[test]
fn a_crash_between_checkpoint_and_recycling_recycles_at_open() {
    let dir = TempDir::new().expect("tempdir");
    let mut r = open(dir.path(), 1024);
    let mut frames = Vec::new();
    let written = fill(&mut r.log, 20, &mut frames);
    let generation = r.log.next_generation;
    drop(r);
    let segments = written
        .iter()
        .map(|w| w.path.clone())
        .collect::<BTreeSet<_>>();
    assert!(segments.len() >= 3);
    // The checkpoint as `checkpoint()` writes it, without the recycling after it.
    let checkpoint = frames[frames.len() - 2].last;
    write_checkpoint(dir.path(), checkpoint, 1, salt_of(dir.path())).expect("checkpoint");
    let r = open(dir.path(), 1024);
    assert_eq!(r.frames, after(&frames, checkpoint));
    assert_eq!(r.log.spares.len(), 2, "max_spares kept");
    assert_eq!(segment_files(dir.path()).len(), 3, "the rest deleted");
    assert!(r.log.next_generation >= generation);
    drop(r);
    let floor = parse_checkpoint(&read_all(&dir.path().join(CHECKPOINT_FILE)))
        .expect("checkpoint")
        .1;
    assert!(floor >= generation, "floor {floor} < {generation}");
    let mut r = open(dir.path(), 1024);
    assert_eq!(r.frames, after(&frames, checkpoint));
    let mut expected = after(&frames, checkpoint);
    fill(&mut r.log, 10, &mut expected);
    drop(r);
    assert_eq!(open(dir.path(), 1024).frames, expected);
}

fn salt_of(dir: &Path) -> u64 {
    parse_checkpoint(&read_all(&dir.join(CHECKPOINT_FILE)))
        .expect("checkpoint")
        .2
}

#[test]
fn damage_before_valid_frames_is_refused() {
    // In the middle of a segment: a valid frame of the same generation follows.
    let (dir, frames, written) = filled_log(64 << 10, 10);
    let copy = copy_dir(dir.path());
    let victim = &written[3];
    let name = victim.path.file_name().expect("name");
    let path = copy.path().join(name);
    let mut bytes = read_all(&path);
    bytes[(victim.frame_start + FRAME_HEADER + 5) as usize] ^= 0x10;
    fs::write(&path, &bytes).expect("write");
    let message = damaged(Log::open(copy.path(), options(64 << 10)));
    assert!(
        message.contains(&name.to_string_lossy().into_owned())
            && message.contains(&format!("offset {}", written[4].frame_start)),
        "{message}"
    );
    // Its header zeroed instead: the same.
    let copy = copy_dir(dir.path());
    write_at(
        &copy.path().join(name),
        victim.frame_start,
        &[0u8; FRAME_HEADER as usize],
    );
    damaged(Log::open(copy.path(), options(64 << 10)));
    // Untouched, the log is whole: the damage is what was refused.
    assert_eq!(open(dir.path(), 64 << 10).frames, frames);

    // The last frame of a full segment damaged, the next segment going on: a gap.
    let (dir, frames, written) = filled_log(1024, 12);
    assert_eq!(open(dir.path(), 1024).frames, frames);
    let boundary = written
        .windows(2)
        .position(|w| w[0].path != w[1].path)
        .expect("a segment boundary");
    let victim = &written[boundary];
    flip(&victim.path, victim.frame_start + FRAME_HEADER);
    let message = damaged(Log::open(dir.path(), options(1024)));
    assert!(message.contains("missing"), "{message}");
}

#[test]
fn a_missing_middle_segment_is_refused() {
    let (dir, frames, written) = filled_log(1024, 20);
    let paths: Vec<_> = written
        .iter()
        .map(|w| w.path.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert!(paths.len() >= 3, "{paths:?}");
    assert_eq!(open(dir.path(), 1024).frames, frames);
    fs::remove_file(&paths[1]).expect("remove");
    let message = damaged(Log::open(dir.path(), options(1024)));
    assert!(message.contains("missing"), "{message}");
}

#[test]
fn a_damaged_header_of_a_segment_with_frames_is_refused() {
    let (dir, frames, written) = filled_log(1024, 20);
    assert_eq!(open(dir.path(), 1024).frames, frames);
    let last = written.last().expect("written");
    write_at(&last.path, 20, b"\x01");
    let message = damaged(Log::open(dir.path(), options(1024)));
    assert!(message.contains("header"), "{message}");
}

#[test]
fn appends_must_continue_the_sequences_and_errors_are_sticky() {
    let dir = TempDir::new().expect("tempdir");
    let mut r = open(dir.path(), 4096);
    r.log.append(1, 3, b"one").expect("append");
    let e = r.log.append(5, 5, b"gap").expect_err("a gap is refused");
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    // Broken: even a correct append fails now.
    assert!(r.log.append(4, 4, b"ok").is_err());
    assert!(r.log.checkpoint(3).is_err());
    drop(r);
    let r = open(dir.path(), 4096);
    assert_eq!(
        r.frames,
        vec![Frame {
            first: 1,
            last: 3,
            payload: b"one".to_vec()
        }]
    );
    let mut log = r.log;
    let e = log.checkpoint(2).expect_err("not a frame's last sequence");
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
}

#[test]
fn an_oversized_frame_gets_a_segment_of_its_own() {
    let dir = TempDir::new().expect("tempdir");
    let mut r = open(dir.path(), 1024);
    let mut frames = Vec::new();
    append(&mut r.log, &mut frames, 1, 10);
    let big = append(&mut r.log, &mut frames, 1, 5000);
    let size = fs::metadata(&big.path).expect("meta").len();
    assert_eq!(size, align8(SEGMENT_HEADER + FRAME_HEADER + 5000));
    append(&mut r.log, &mut frames, 1, 10);
    drop(r);
    let mut r = open(dir.path(), 1024);
    assert_eq!(r.frames, frames);
    // Once checkpointed it is deleted rather than kept as an odd-sized spare.
    r.log.checkpoint(r.log.last()).expect("checkpoint");
    assert!(!big.path.exists());
}

#[test]
fn a_spare_made_off_the_append_path_is_used() {
    let dir = TempDir::new().expect("tempdir");
    let mut r = open(dir.path(), 1024);
    let job = r.log.spare_wanted().expect("a spare is wanted");
    assert_eq!(r.log.spare_wanted(), None, "one job at a time");
    make_spare(&job).expect("make the spare");
    assert_eq!(fs::metadata(&job.path).expect("meta").len(), 1024);
    r.log.add_spare(job.clone()).expect("add");
    assert_eq!(r.log.spare_wanted(), None, "a spare is ready");
    let mut frames = Vec::new();
    let w = append(&mut r.log, &mut frames, 1, 10);
    assert_eq!(w.path, job.path, "the append used the spare");
    assert_eq!(segment_files(dir.path()).len(), 1);
    let next = r.log.spare_wanted().expect("the spare was used up");
    assert_ne!(next.path, job.path);
    r.log.spare_abandoned(next);
    assert!(r.log.spare_wanted().is_some());
}

/// A tmpfs of a given size, mounted for one test and unmounted after it.
struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = TempDir::new().expect("tempdir");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount(8)");
        assert!(
            out.status.success(),
            "mounting a {size} tmpfs at {} was refused ({}): this test needs root and tmpfs to fill a real filesystem: {}",
            dir.path().display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { dir }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

fn is_enospc(e: &io::Error) -> bool {
    e.raw_os_error() == Some(ENOSPC)
}

#[test]
fn enospc_making_a_segment_breaks_the_log_and_leaves_nothing() {
    let fs_ = Tmpfs::mount("8k");
    let dir = fs_.dir.path().join("wal");
    let segment = 64 << 10;
    let mut r = open(&dir, segment);
    // Off the append path: the error comes back and no partial file stays.
    let job = r.log.spare_wanted().expect("a spare is wanted");
    let e = make_spare(&job).expect_err("64 KiB does not fit in 8 KiB");
    assert!(is_enospc(&e), "{e}");
    r.log.spare_abandoned(job);
    assert!(segment_files(&dir).is_empty(), "{:?}", segment_files(&dir));
    // On the append path: the append fails, and so does every later one.
    let e = r.log.append(1, 1, b"x").expect_err("no room for a segment");
    assert!(is_enospc(&e), "{e}");
    assert!(segment_files(&dir).is_empty(), "{:?}", segment_files(&dir));
    let e = r.log.append(1, 1, b"x").expect_err("the log is broken");
    assert!(e.to_string().contains("broken"), "{e}");
    drop(r);
    let r = open(&dir, segment);
    assert_eq!((r.frames.len(), r.log.last()), (0, 0));
    drop(r);
}

#[test]
fn enospc_at_append_breaks_the_log_and_keeps_what_was_acknowledged() {
    let fs_ = Tmpfs::mount("64k");
    let dir = fs_.dir.path().join("wal");
    let segment = 16 << 10;
    let mut r = open(&dir, segment);
    let mut acknowledged = Vec::new();
    let error = loop {
        let first = r.log.last() + 1;
        let body = payload(first, 3000);
        match r.log.append(first, first, &body) {
            Ok(()) => acknowledged.push(Frame {
                first,
                last: first,
                payload: body,
            }),
            Err(e) => break e,
        }
        assert!(acknowledged.len() < 100, "the tmpfs never filled");
    };
    assert!(is_enospc(&error), "{error}");
    assert!(acknowledged.len() >= 10, "{}", acknowledged.len());
    let next = r.log.last() + 1;
    assert!(r.log.append(next, next, b"small").is_err(), "sticky");
    assert!(r.log.checkpoint(next - 1).is_err(), "sticky");
    drop(r);
    let r = open(&dir, segment);
    assert_eq!(r.frames, acknowledged);
    drop(r);
}

type Image = BTreeMap<String, Vec<u8>>;

fn image(dir: &Path) -> Image {
    segment_files(dir)
        .into_iter()
        .chain([CHECKPOINT_FILE.to_owned()])
        .map(|n| {
            let bytes = read_all(&dir.join(&n));
            (n, bytes)
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    /// A crash during append `cut`: the files as they were before it, plus part of its
    /// write (a prefix, or a random subset of its 512-byte sectors). What opens is a
    /// prefix of the appended frames holding every acknowledged one after the
    /// checkpoint, and appending goes on.
    #[test]
    fn recovered_frames_are_a_prefix_holding_every_acknowledged_one(
        sizes in proptest::collection::vec((0usize..1500, 1u64..4), 1..24),
        checkpoint_every in 2usize..8,
        cut in any::<prop::sample::Index>(),
        keep in any::<u64>(),
        sectors in any::<bool>(),
    ) {
        let dir = TempDir::new().expect("tempdir");
        let segment = 2048;
        let mut r = open(dir.path(), segment);
        let mut frames: Vec<Frame> = Vec::new();
        let mut before = Vec::new();
        let mut checkpoints = Vec::new();
        let mut writes = Vec::new();
        for (i, (len, span)) in sizes.iter().enumerate() {
            if i > 0 && i % checkpoint_every == 0 {
                let seq = frames[frames.len() / 2].last.max(r.log.checkpoint_seq());
                r.log.checkpoint(seq).expect("checkpoint");
            }
            before.push(image(dir.path()));
            checkpoints.push(r.log.checkpoint_seq());
            let w = append(&mut r.log, &mut frames, *span, *len);
            let bytes = read_all(&w.path)[w.write_start as usize..w.write_end as usize].to_vec();
            writes.push((w, bytes));
        }
        drop(r);
        let k = cut.index(sizes.len());
        let (w, bytes) = &writes[k];
        let name = w.path.file_name().expect("name").to_string_lossy().into_owned();
        let crash = TempDir::new().expect("tempdir");
        let mut files = before[k].clone();
        // A file the append made itself was zero-filled first (no frame is oversized).
        let file = files.entry(name.clone()).or_insert_with(|| vec![0; segment as usize]);
        let whole = if sectors {
            // Sectors of the file the write touched, each kept or lost at random.
            let mut rng = keep;
            (w.write_start / 512..=(w.write_end - 1) / 512).fold(true, |all, s| {
                rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let kept = rng >> 63 == 1;
                if kept {
                    let from = (s * 512).max(w.write_start);
                    let to = ((s + 1) * 512).min(w.write_end);
                    file[from as usize..to as usize]
                        .copy_from_slice(&bytes[(from - w.write_start) as usize..(to - w.write_start) as usize]);
                }
                all && kept
            })
        } else {
            let n = (keep % (bytes.len() as u64 + 1)) as usize;
            file[w.write_start as usize..w.write_start as usize + n].copy_from_slice(&bytes[..n]);
            n == bytes.len()
        };
        for (n, b) in &files {
            fs::write(crash.path().join(n), b).expect("write the crash image");
        }
        let r = Log::open(crash.path(), options(segment));
        let mut r = match r {
            Ok(r) => r,
            Err(e) => return Err(TestCaseError::fail(format!("crash in append {k}: {e}"))),
        };
        let checkpoint = checkpoints[k];
        prop_assert_eq!(r.checkpoint, checkpoint);
        let acknowledged = after(&frames[..k], checkpoint);
        let n = acknowledged.len();
        prop_assert!(r.frames.len() == n || r.frames.len() == n + 1, "{} frames, {} acknowledged", r.frames.len(), n);
        prop_assert_eq!(&r.frames[..n], &acknowledged[..]);
        if r.frames.len() == n + 1 {
            prop_assert_eq!(&r.frames[n], &frames[k]);
        }
        if whole {
            prop_assert_eq!(r.frames.len(), n + 1, "the whole write was kept");
        }
        let mut expected = r.frames.clone();
        append(&mut r.log, &mut expected, 1, 300);
        drop(r);
        let r = open(crash.path(), segment);
        prop_assert_eq!(r.frames, expected);
    }
}
