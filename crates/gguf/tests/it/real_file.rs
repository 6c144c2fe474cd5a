use agora_gguf::open;

/// Set `AGORA_GGUF_SAMPLE=/path/to/model.gguf` to check a real file reads and every tensor's
/// data lies inside it; skipped otherwise.
#[test]
fn reads_the_file_named_by_env() {
    let Some(path) = std::env::var_os("AGORA_GGUF_SAMPLE") else {
        return;
    };
    let (header, mut file) = open(&path).expect("the sample reads");
    let data_len: u64 = header.tensors.iter().map(|t| t.byte_len()).sum();
    eprintln!(
        "{}: v{}, {} metadata keys, {} tensors, {data_len} bytes of data at {}",
        path.to_string_lossy(),
        header.version,
        header.metadata.len(),
        header.tensors.len(),
        header.data_offset,
    );
    if let Some(info) = header.tensors.first() {
        let data = header.read_tensor_data(&mut file, info).expect("reads");
        assert_eq!(data.len() as u64, info.byte_len());
    }
}
