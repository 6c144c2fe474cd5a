use std::io::Cursor;
use std::sync::OnceLock;

use proptest::prelude::*;
use proptest::sample::Index;

use crate::common::{read, sample_file};
use crate::peak_heap;

fn sample() -> &'static [u8] {
    static SAMPLE: OnceLock<Vec<u8>> = OnceLock::new();
    SAMPLE.get_or_init(sample_file)
}

/// Reads `bytes` (Ok or Err both fine) and, when the header is accepted, every tensor's data;
/// checks the peak heap stays within a small multiple of the input plus a constant (the
/// `BufReader` buffer and the like).
fn check(bytes: &[u8]) -> Result<(), TestCaseError> {
    let ((), peak) = peak_heap(|| {
        if let Ok(header) = read(bytes) {
            for info in &header.tensors {
                let data = header
                    .read_tensor_data(&mut Cursor::new(bytes), info)
                    .expect("an accepted header's tensors lie inside the file");
                assert_eq!(data.len() as u64, info.byte_len());
            }
        }
    });
    let bound = 64 * bytes.len() + (64 << 10);
    prop_assert!(
        peak <= bound,
        "peak heap {peak} > {bound} for {} bytes",
        bytes.len()
    );
    Ok(())
}

/// Values likely to sit in a length or count field.
fn interesting_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(u64::MAX),
        Just(u64::MAX - 31),
        Just(1 << 63),
        Just(u64::from(u32::MAX)),
        Just(16 << 20),
        0u64..4096,
        any::<u64>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn mutated_bytes_never_panic(edits in prop::collection::vec((any::<Index>(), any::<u8>()), 1..8)) {
        let mut bytes = sample().to_vec();
        for (at, byte) in edits {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        check(&bytes)?;
    }

    #[test]
    fn mutated_fields_never_panic(edits in prop::collection::vec((any::<Index>(), interesting_u64()), 1..4)) {
        let mut bytes = sample().to_vec();
        for (at, value) in edits {
            let i = at.index(bytes.len() - 8);
            bytes[i..i + 8].copy_from_slice(&value.to_le_bytes());
        }
        check(&bytes)?;
    }

    #[test]
    fn spliced_bytes_never_panic(at in any::<Index>(), len in 0usize..64, junk in prop::collection::vec(any::<u8>(), 0..64)) {
        let mut bytes = sample().to_vec();
        let i = at.index(bytes.len());
        let end = (i + len).min(bytes.len());
        bytes.splice(i..end, junk);
        check(&bytes)?;
    }

    #[test]
    fn random_bytes_never_panic(prefix in any::<bool>(), tail in prop::collection::vec(any::<u8>(), 0..512)) {
        let mut bytes = Vec::new();
        if prefix {
            bytes.extend_from_slice(b"GGUF\x03\0\0\0");
        }
        bytes.extend_from_slice(&tail);
        check(&bytes)?;
    }
}

#[test]
fn the_sample_passes_the_memory_check() {
    let ((), peak) = peak_heap(|| {
        let header = read(sample()).expect("reads");
        assert!(!header.tensors.is_empty());
    });
    assert!(
        peak > 0 && peak <= 64 * sample().len() + (64 << 10),
        "{peak}"
    );
}
