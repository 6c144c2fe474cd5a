//! A fingerprint has exactly the format the model fixes: one chunk per 32 output tokens (the
//! last may be short), k = `k_for(hidden)` entries a chunk, distinct in-range indices in
//! descending order of magnitude, finite values. Before, any k up to 1024 and repeated
//! indices were accepted: a chunk holding only the top entry, or the top entry repeated k
//! times, matched "perfectly". Any other format fails before compute (the provider signed it).

use agora_verify::fingerprint::{k_for, ChunkPrint};
use agora_verify::Fingerprint;

use crate::common::{check, honest, prompt, sampling, shipped_dir};

#[test]
fn crafted_fingerprints_fail_before_compute() {
    let model =
        agora_model::load(&shipped_dir(), &agora_model::LoadOptions::default()).expect("load");
    let hidden = model.model.config().hidden_size;
    let k = k_for(hidden);
    let p = prompt(&model, 8, 3);
    let good = honest(&model, &p, &sampling(11, 1.0), 40, false);
    assert_eq!(good.print.chunks.len(), 2);
    assert!(good.print.chunks.iter().all(|c| c.indices.len() == k));
    assert!(check(&model, &good).passed);

    let top = |c: &ChunkPrint| (c.indices[0], c.values[0]);
    type Craft = Box<dyn Fn(&mut Fingerprint)>;
    let crafts: Vec<(&str, Craft)> = vec![
        (
            "the top entry repeated k times",
            Box::new(move |f| {
                let (i, v) = top(&f.chunks[0]);
                f.chunks[0] = ChunkPrint {
                    indices: vec![i; k],
                    values: vec![v; k],
                };
            }),
        ),
        (
            "only the top entry",
            Box::new(|f| {
                f.chunks[0].indices.truncate(1);
                f.chunks[0].values.truncate(1);
            }),
        ),
        (
            "k + 1 entries",
            Box::new(|f| {
                let c = &mut f.chunks[1];
                let free = (0..u16::MAX)
                    .find(|i| !c.indices.contains(i))
                    .expect("free");
                c.indices.push(free);
                c.values.push(0);
            }),
        ),
        (
            "1024 entries",
            Box::new(|f| {
                let c = &mut f.chunks[1];
                c.indices = (0..1024).collect();
                c.values = vec![0; 1024];
            }),
        ),
        (
            "an index past the hidden state",
            Box::new(move |f| f.chunks[0].indices[k - 1] = hidden as u16),
        ),
        (
            "two entries swapped",
            Box::new(|f| {
                let c = &mut f.chunks[0];
                let last = c.indices.len() - 1;
                c.indices.swap(0, last);
                c.values.swap(0, last);
            }),
        ),
        (
            "a non-finite value",
            Box::new(|f| f.chunks[1].values[0] = 0x7f80),
        ),
        (
            "more values than indices",
            Box::new(|f| f.chunks[1].values.push(0)),
        ),
        ("a chunk missing", Box::new(|f| drop(f.chunks.pop()))),
        (
            "a chunk too many",
            Box::new(|f| {
                let c = f.chunks[0].clone();
                f.chunks.push(c);
            }),
        ),
    ];
    for (what, craft) in crafts {
        let mut bad = good.clone();
        craft(&mut bad.print);
        let r = check(&model, &bad);
        assert!(!r.passed, "{what}: {r:?}");
        // Failed on its format: no statistics were computed.
        assert_eq!(r.min_overlap, 0.0, "{what} fails before compute: {r:?}");
        assert!(
            r.reasons.iter().any(|x| x.contains("fingerprint")),
            "{what}: {r:?}"
        );
    }
}
