use agora_gguf::Error;

use crate::common::{read, sample_file, Bytes};

#[test]
fn every_cut_before_the_last_tensor_ends_is_an_error() {
    let bytes = sample_file();
    let header = read(&bytes).expect("sample file reads");
    let last = header.tensors.last().expect("has tensors");
    let data_end = (header.data_offset + last.offset + last.byte_len()) as usize;
    assert!(data_end < bytes.len(), "the last tensor is padded");

    for cut in 0..bytes.len() {
        let result = read(&bytes[..cut]);
        if cut < data_end {
            match result {
                Err(
                    Error::Truncated { .. }
                    | Error::TooLarge { .. }
                    | Error::TensorOutOfBounds { .. },
                ) => {}
                other => panic!("cut at {cut}: expected a truncation error, got {other:?}"),
            }
        } else {
            // Only the last tensor's padding is missing, which llama.cpp accepts too.
            assert_eq!(result.ok().as_ref(), Some(&header), "cut at {cut}");
        }
    }
}

#[test]
fn cut_in_a_value_names_the_key() {
    let mut b = Bytes::header(3, 0, 1);
    b.str("general.name").u32(8).u64(10).raw(b"abc");
    match read(&b.0) {
        Err(Error::Truncated {
            what,
            offset,
            file_len,
        }) => {
            assert_eq!(what, "the value of `general.name`");
            assert_eq!((offset, file_len), (56, 59));
        }
        other => panic!("expected Truncated, got {other:?}"),
    }
}
