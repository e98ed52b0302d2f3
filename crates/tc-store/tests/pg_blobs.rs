//! Blobs in the PostgreSQL store: stored in chunks of 1 MiB and read back byte-exact, whole and
//! by ranges inside a chunk and across chunk boundaries; a content that is not the declared one
//! stores nothing and the error says what; the same blob stored twice, or by two uploads at
//! once, is fine.

use std::io::Read;

use ring::digest::{SHA256, digest};
use tc_store::{BLOB_CHUNK_BYTES, BlobError, BlobPut, PgStore};
use tc_testkit::postgres::TestPostgres;

const CHUNK: usize = BLOB_CHUNK_BYTES;

/// Bytes that differ from chunk to chunk and within one (a misplaced chunk or offset shows).
fn content(size: usize, seed: u32) -> Vec<u8> {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..size)
        .map(|_| {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            (state >> 16) as u8
        })
        .collect()
}

fn sha256(bytes: &[u8]) -> String {
    digest(&SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn read_all(store: &PgStore, sha: &str, start: u64, length: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let mut pieces = 0;
    let delivered = store
        .read_blob(sha, start, length, |piece| {
            assert!(piece.len() <= CHUNK, "a piece larger than a chunk");
            pieces += 1;
            out.extend_from_slice(&piece);
            true
        })
        .unwrap();
    assert_eq!(delivered, length);
    assert!(
        pieces <= (length as usize).div_ceil(CHUNK) + 1,
        "{pieces} pieces"
    );
    out
}

#[test]
fn blobs_of_every_shape_are_stored_in_chunks_and_read_back_exactly() {
    let server = TestPostgres::start();
    let url = server.create_database();
    let store = PgStore::connect(&url).unwrap();
    let sizes = [0, 1000, CHUNK, 3 * CHUNK + 12_345];
    for (seed, size) in sizes.into_iter().enumerate() {
        let bytes = content(size, seed as u32);
        let sha = sha256(&bytes);
        assert_eq!(store.blob_size(&sha).unwrap(), None);
        assert_eq!(
            store.put_blob(&sha, size as u64, &bytes[..]).unwrap(),
            BlobPut::Stored,
            "{size} bytes"
        );
        assert_eq!(store.blob_size(&sha).unwrap(), Some(size as u64));
        assert_eq!(
            read_all(&store, &sha, 0, size as u64),
            bytes,
            "{size} bytes"
        );
        let chunks = server.psql(
            &url,
            &format!("SELECT count(*) FROM blob_chunks WHERE sha256 = '{sha}'"),
        );
        assert_eq!(chunks, size.div_ceil(CHUNK).to_string(), "{size} bytes");
        // A second upload of the same blob is fine and changes nothing.
        assert_eq!(
            store.put_blob(&sha, size as u64, &bytes[..]).unwrap(),
            BlobPut::AlreadyStored
        );
        assert_eq!(read_all(&store, &sha, 0, size as u64), bytes);
    }

    let bytes = content(3 * CHUNK + 12_345, 3);
    let sha = sha256(&bytes);
    let ranges = [
        (10, 90),                    // inside the first chunk
        (CHUNK + 5, 1),              // one byte inside the second
        (CHUNK - 10, 20),            // across the first boundary
        (CHUNK - 1, CHUNK + 2),      // across two boundaries
        (CHUNK, CHUNK),              // exactly the second chunk
        (3 * CHUNK - 3, 12_345 + 3), // into the last, partial chunk, to the end
        (bytes.len() - 1, 1),        // the last byte
        (0, bytes.len()),            // everything
    ];
    for (start, length) in ranges {
        assert_eq!(
            read_all(&store, &sha, start as u64, length as u64),
            bytes[start..start + length],
            "bytes {start}+{length}"
        );
    }
    // A range past the end, and a blob that is not there, are errors that say so.
    match store.read_blob(&sha, bytes.len() as u64 - 1, 2, |_| true) {
        Err(BlobError::OutOfRange { size, .. }) => assert_eq!(size, bytes.len() as u64),
        other => panic!("expected OutOfRange, got {other:?}"),
    }
    let missing = "0".repeat(64);
    assert!(matches!(
        store.read_blob(&missing, 0, 0, |_| true),
        Err(BlobError::NotFound { .. })
    ));
    // The consumer may stop early.
    let mut seen = 0;
    let delivered = store
        .read_blob(&sha, 0, bytes.len() as u64, |piece| {
            seen += piece.len();
            false
        })
        .unwrap();
    assert_eq!((delivered, seen), (CHUNK as u64, CHUNK));
}

/// A source that fails after some bytes.
struct Failing(usize);

impl Read for Failing {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.0 == 0 {
            return Err(std::io::Error::other("the disk went away"));
        }
        let n = buf.len().min(self.0);
        buf[..n].fill(7);
        self.0 -= n;
        Ok(n)
    }
}

#[test]
fn a_content_that_is_not_the_declared_one_stores_nothing_and_says_what() {
    let server = TestPostgres::start();
    let url = server.create_database();
    let store = PgStore::connect(&url).unwrap();
    let bytes = content(2 * CHUNK + 100, 9);
    let sha = sha256(&bytes);
    let size = bytes.len() as u64;
    let mut other = bytes.clone();
    *other.last_mut().unwrap() ^= 1;

    match store.put_blob(&sha, size, &other[..]) {
        Err(BlobError::DigestMismatch { expected, actual }) => {
            assert_eq!(expected, sha);
            assert_eq!(actual, sha256(&other));
        }
        result => panic!("expected a digest mismatch, got {result:?}"),
    }
    let longer = [&bytes[..], b"x"].concat();
    match store.put_blob(&sha, size, &longer[..]) {
        Err(error @ BlobError::TooLong { expected, .. }) => {
            assert_eq!(expected, size);
            assert!(
                error.to_string().contains("longer than the declared"),
                "{error}"
            );
        }
        result => panic!("expected TooLong, got {result:?}"),
    }
    match store.put_blob(&sha, size, &bytes[..CHUNK + 1]) {
        Err(BlobError::TooShort {
            expected, actual, ..
        }) => assert_eq!((expected, actual), (size, CHUNK as u64 + 1)),
        result => panic!("expected TooShort, got {result:?}"),
    }
    match store.put_blob(&sha, size, Failing(CHUNK + 3)) {
        Err(error @ BlobError::Read { .. }) => {
            assert!(error.to_string().contains("the disk went away"), "{error}")
        }
        result => panic!("expected a read error, got {result:?}"),
    }
    match store.put_blob("ABC", 0, &b""[..]) {
        Err(BlobError::InvalidDigest { sha256 }) => assert_eq!(sha256, "ABC"),
        result => panic!("expected InvalidDigest, got {result:?}"),
    }
    // Nothing of those uploads was kept, not even the chunks written before the mismatch.
    assert_eq!(store.blob_size(&sha).unwrap(), None);
    assert_eq!(server.psql(&url, "SELECT count(*) FROM blob_chunks"), "0");
    assert_eq!(server.psql(&url, "SELECT count(*) FROM blobs"), "0");
    // The right content is stored after all that.
    assert_eq!(
        store.put_blob(&sha, size, &bytes[..]).unwrap(),
        BlobPut::Stored
    );
    assert_eq!(read_all(&store, &sha, 0, size), bytes);
}

#[test]
fn two_uploads_of_one_blob_at_once_store_it_once() {
    let server = TestPostgres::start();
    let url = server.create_database();
    let store = PgStore::connect(&url).unwrap();
    let bytes = content(2 * CHUNK + CHUNK / 2, 4);
    let sha = sha256(&bytes);
    let size = bytes.len() as u64;
    let outcomes: Vec<BlobPut> = std::thread::scope(|scope| {
        let uploads: Vec<_> = (0..2)
            .map(|_| scope.spawn(|| store.put_blob(&sha, size, &bytes[..]).unwrap()))
            .collect();
        uploads.into_iter().map(|u| u.join().unwrap()).collect()
    });
    assert_eq!(
        outcomes.iter().filter(|o| **o == BlobPut::Stored).count(),
        1,
        "{outcomes:?}"
    );
    assert_eq!(read_all(&store, &sha, 0, size), bytes);
    assert_eq!(server.psql(&url, "SELECT count(*) FROM blob_chunks"), "3");
}

#[test]
fn blobs_are_deleted_with_their_chunks_and_the_store_serves_runtime_threads() {
    let server = TestPostgres::start();
    let url = server.create_database();
    let store = PgStore::connect(&url).unwrap();
    let bytes = content(CHUNK + 1, 5);
    let sha = sha256(&bytes);
    // Called on an async runtime's thread, as the controller's handlers may.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .unwrap();
    let (store, read) = runtime.block_on(async {
        tokio::spawn(async move {
            store
                .put_blob(&sha256(&bytes), bytes.len() as u64, &bytes[..])
                .unwrap();
            let read = read_all(&store, &sha256(&bytes), 0, bytes.len() as u64);
            assert_eq!(read, bytes);
            (store, read)
        })
        .await
        .unwrap()
    });
    assert_eq!(read.len(), CHUNK + 1);
    assert!(store.delete_blob(&sha).unwrap());
    assert_eq!(store.blob_size(&sha).unwrap(), None);
    assert_eq!(server.psql(&url, "SELECT count(*) FROM blob_chunks"), "0");
    assert!(!store.delete_blob(&sha).unwrap());
}
