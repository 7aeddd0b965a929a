//! Every limit of the engine, in one place, with compile-time checks of how they relate.
//!
//! Sizes are in bytes unless the name says otherwise.

/// The unit of direct I/O: buffers, file offsets and lengths of O_DIRECT reads and writes are
/// multiples of it (open(2), "O_DIRECT": alignment to the logical block size; 4 KiB covers every
/// device this project targets).
pub const BLOCK_SIZE: usize = 4096;

/// Log records are laid out at this alignment in the log stream.
pub const RECORD_ALIGN: usize = 8;

/// Size of a log record header (see `wal::record`).
pub const RECORD_HEADER_SIZE: usize = 40;

/// Largest body of one log record. Larger payloads are split by the caller.
pub const RECORD_BODY_SIZE_MAX: usize = 64 * 1024;

/// Capacity of one log buffer, and so the largest single write of the group commit: a batch
/// never exceeds it. Recovery uses it as the largest region one torn write can span.
pub const LOG_BUFFER_SIZE: usize = 1024 * 1024;

/// Log buffers per database log: one gathering while one is written, plus spares for the
/// mirror's zero-copy send, which can hold a buffer after the write completed.
pub const LOG_BUFFERS_PER_LOG: usize = 2;

/// The segment header occupies the first block of every segment file.
pub const SEGMENT_HEADER_SIZE: usize = BLOCK_SIZE;

/// Default total size of one segment file (header block included).
pub const SEGMENT_SIZE_DEFAULT: u64 = 64 * 1024 * 1024;

/// Smallest segment size accepted (tests use small segments to exercise rotation).
pub const SEGMENT_SIZE_MIN: u64 = 256 * 1024;

/// Largest segment size accepted.
pub const SEGMENT_SIZE_MAX: u64 = 4 * 1024 * 1024 * 1024;

/// Retired segments kept for recycling (overwriting a written file costs about half of writing
/// into fresh or unwritten space on ext4; see ../shared/CRATES.md).
pub const SEGMENTS_RECYCLED_MAX: usize = 2;

/// Submission queue entries per shard ring.
pub const RING_ENTRIES: u32 = 256;

/// Bounded cross-thread append queue in front of one log (requests from non-shard threads).
pub const APPEND_QUEUE_CAPACITY: usize = 1024;

/// Committers a benchmark may run at once.
pub const BENCH_CLIENTS_MAX: usize = 4096;

/// The data file grows by this many pages at a time (zero-filled).
pub const DATA_FILE_EXTENT_PAGES: usize = 256;

/// Largest key of the key-value store.
pub const KEY_SIZE_MAX: usize = 1024;

/// Largest value of the key-value store.
pub const VALUE_SIZE_MAX: usize = 16 * 1024 * 1024;

/// Largest RESP bulk string a client may send (a value plus room for nothing else: larger bulk
/// lengths are refused before anything is allocated).
pub const RESP_BULK_LEN_MAX: usize = VALUE_SIZE_MAX;

/// Most arguments in one RESP command (MSET of many keys, for example).
pub const RESP_ARGS_MAX: usize = 1024 * 1024;

/// Longest inline command line (telnet-style commands).
pub const RESP_INLINE_LEN_MAX: usize = 64 * 1024;

const _: () = assert!(LOG_BUFFER_SIZE % BLOCK_SIZE == 0);
const _: () = assert!(RESP_BULK_LEN_MAX >= VALUE_SIZE_MAX && RESP_BULK_LEN_MAX >= KEY_SIZE_MAX);
const _: () = assert!(BLOCK_SIZE % RECORD_ALIGN == 0);
const _: () = assert!(RECORD_HEADER_SIZE % RECORD_ALIGN == 0);
// A gathering buffer starts with at most one partly filled block carried over from the previous
// batch; any single record (and a padding record, which is never larger than the record that
// needs it) must still fit after it.
const _: () = assert!(BLOCK_SIZE + 2 * (RECORD_HEADER_SIZE + RECORD_BODY_SIZE_MAX) <= LOG_BUFFER_SIZE);
// A segment holds at least two records of the largest size (one may need a padding record).
const _: () =
    assert!(SEGMENT_SIZE_MIN as usize >= SEGMENT_HEADER_SIZE + 2 * (RECORD_HEADER_SIZE + RECORD_BODY_SIZE_MAX));
const _: () = assert!(SEGMENT_SIZE_MIN % BLOCK_SIZE as u64 == 0);
const _: () = assert!(SEGMENT_SIZE_DEFAULT % BLOCK_SIZE as u64 == 0);
const _: () = assert!(APPEND_QUEUE_CAPACITY.is_power_of_two());
const _: () = assert!(LOG_BUFFERS_PER_LOG >= 2);

/// Bytes per O_DIRECT write when a new log segment is zero-filled.
pub const ZERO_FILL_CHUNK: usize = 64 * 1024;
/// A segment prepared in the background rests this many times as long as each zero-fill chunk
/// took, so it takes at most a quarter of the device's time from the log writes, unless a log
/// already waits for the segment (then it fills at full speed).
pub const ZERO_FILL_REST_FACTOR: u32 = 3;
