//! An audit that cannot run is no verdict (`Err(AuditError)`), never a failed report: another
//! model than the receipt names, or an auditor's model that computes nonsense.

use std::collections::HashMap;

use agora_model::LoadOptions;
use agora_verify::{audit, AuditError, Thresholds};
use candle_core::Tensor;

use crate::common::{answer, honest, prompt, sampling, shipped_dir, synthetic};

#[test]
fn another_model_than_the_receipt_names_is_no_verdict() {
    let m = synthetic();
    let p = prompt(&m.f32, 5, 1);
    let c = honest(&m.f32, &p, &sampling(1, 1.0), 20, false);
    let shipped = agora_model::load(&shipped_dir(), &LoadOptions::default()).expect("shipped");
    let a = answer(&m.f32, &c);
    match audit(&shipped, &a, &Thresholds::default()) {
        Err(AuditError::WrongModel { receipt, auditor }) => {
            assert_eq!(receipt, m.f32.id);
            assert_eq!(auditor, shipped.id);
        }
        other => panic!("expected no verdict, got {other:?}"),
    }
}

#[test]
fn an_auditor_model_computing_nan_is_no_verdict() {
    let m = synthetic();
    let cfg = m.f32.manifest.config.clone();
    let mut w: HashMap<String, Tensor> =
        agora_model::init::init_weights(&cfg, 5, &candle_core::Device::Cpu).expect("init");
    let head = w.get("lm_head.weight").expect("an untied head").clone();
    let nan = (head.ones_like().expect("ones") * f64::NAN).expect("nan");
    w.insert("lm_head.weight".into(), nan);
    let dir = tempfile::tempdir().expect("tmp");
    agora_model::safetensors_io::write_hf_dir(dir.path(), &cfg, &w, &m.f32.tokenizer, None)
        .expect("write");
    let broken = agora_model::load(dir.path(), &LoadOptions::default()).expect("load");
    let p = prompt(&m.f32, 5, 2);
    for temperature in [0.0, 1.0] {
        let c = honest(&m.f32, &p, &sampling(4, temperature), 20, false);
        let mut a = answer(&m.f32, &c);
        a.model = broken.id;
        match audit(&broken, &a, &Thresholds::default()) {
            Err(AuditError::NonFinite { .. }) => {}
            other => panic!("temperature {temperature}: expected no verdict, got {other:?}"),
        }
    }
}

/// The other side: sampler settings no provider accepts are the provider's signed fault (a
/// failed audit before compute), not a replay that errors out into no verdict.
#[test]
fn sampler_settings_no_provider_accepts_fail() {
    let m = synthetic();
    let p = prompt(&m.f32, 5, 3);
    let c = honest(&m.f32, &p, &sampling(2, 1.0), 10, false);
    for (temperature, top_p) in [(-1.0, 1.0), (f64::NAN, 1.0), (1.0, 0.0), (1.0, 2.0)] {
        let mut a = answer(&m.f32, &c);
        a.sampling.temperature = temperature;
        a.sampling.top_p = top_p;
        let r = audit(&m.f32, &a, &Thresholds::default()).expect("a verdict");
        assert!(!r.passed, "temperature {temperature}, top_p {top_p}: {r:?}");
    }
}
