//! The matcher accepts what the schema generates and nothing else; masks agree with
//! byte-by-byte feeding.

use proptest::prelude::*;
use serde_json::{json, Value};

use crate::{Grammar, GrammarError, Matcher, Vocab};

fn accepts(g: &Grammar, text: &str) -> bool {
    let mut m = Matcher::new(g);
    m.feed_all(g, text.as_bytes()) && m.accepting(g)
}

fn person() -> Grammar {
    Grammar::compile(
        r#"{"type":"object","properties":{"name":{"type":"string"},"age":{"type":"integer"},
            "tags":{"type":"array","items":{"enum":["a","b"]},"maxItems":2},
            "nick":{"type":["string","null"]}},
            "required":["name","age"],"additionalProperties":false}"#,
    )
    .expect("compiles")
}

#[test]
fn schema_texts_are_matched_exactly() {
    let g = person();
    // Properties in byte order of their names: age, name, nick, tags.
    for ok in [
        r#"{"age":3,"name":"x"}"#,
        r#"{ "age": -12, "name": "é\"\u00e9", "nick": null, "tags": ["a", "b"] }"#,
        r#"{"age":0,"name":"","tags":[]}"#,
        "{\n  \"age\": 7,\n  \"name\": \"z\"\n}",
    ] {
        assert!(accepts(&g, ok), "{ok}");
        let v: Value = serde_json::from_str(ok).expect("json");
        assert!(g.validate(&v).is_ok(), "{ok}");
    }
    for bad in [
        r#"{"name":"x","age":3}"#,                      // out of order
        r#"{"age":3}"#,                                 // name missing
        r#"{"age":3.5,"name":"x"}"#,                    // not an integer
        r#"{"age":3,"name":"x","tags":["c"]}"#,         // not in enum
        r#"{"age":3,"name":"x","tags":["a","a","b"]}"#, // too many
        r#"{"age":3,"name":"x","extra":1}"#,            // undeclared
        r#"{"age":03,"name":"x"}"#,                     // leading zero
        r#" {"age":3,"name":"x"}"#,                     // leading whitespace
        r#"{"age":3,"name":"x"} "#,                     // trailing bytes
        "{\"age\":3,\"name\":\"a\nb\"}",                // raw control character
        r#"{"age":3,"name":"\x"}"#,                     // bad escape
    ] {
        assert!(!accepts(&g, bad), "{bad}");
    }
    // Invalid UTF-8 inside a string is refused byte by byte.
    let mut m = Matcher::new(&g);
    assert!(m.feed_all(&g, br#"{"age":1,"name":""#));
    assert!(!m.clone().feed(&g, 0xc0));
    assert!(!m.clone().feed_all(&g, &[0xed, 0xa0, 0x80]), "a surrogate");
    assert!(m.feed_all(&g, "日本".as_bytes()));
}

#[test]
fn property_ordering_puts_named_properties_first() {
    let g = Grammar::from_schema(&json!({"type":"object","propertyOrdering":["name","arguments"],
        "properties":{"arguments":{"type":"object"},"name":{"const":"f"}},"required":["name","arguments"]}))
    .expect("compiles");
    assert!(accepts(&g, r#"{"name":"f","arguments":{}}"#));
    assert!(!accepts(&g, r#"{"arguments":{},"name":"f"}"#));
    assert!(
        Grammar::from_schema(&json!({"properties":{"a":{}},"propertyOrdering":["b"]})).is_err()
    );
}

#[test]
fn json_object_accepts_any_object_and_nothing_else() {
    let g = Grammar::json_object();
    for ok in [
        r#"{}"#,
        r#"{"a":[1,{"b":null}],"c":"d","e":true,"f":-0.5e+10}"#,
    ] {
        assert!(accepts(&g, ok), "{ok}");
    }
    for bad in [
        "[]",
        "1",
        r#""s""#,
        r#"{"a":}"#,
        r#"{"a":1,}"#,
        r#"{"a":tru}"#,
    ] {
        assert!(!accepts(&g, bad), "{bad}");
    }
    assert_eq!(
        g,
        Grammar::compile(crate::JSON_OBJECT_SCHEMA).expect("compiles"),
        "the wire's json_object schema is the same grammar"
    );
}

#[test]
fn unsupported_features_are_named() {
    for (schema, feature) in [
        (json!({"type":"string","pattern":"^a"}), "pattern"),
        (json!({"type":"string","format":"date"}), "format"),
        (json!({"$ref":"#/$defs/a"}), "$ref"),
        (json!({"oneOf":[{"type":"string"}]}), "oneOf"),
        (
            json!({"anyOf":[{"type":"string"},{"enum":["x"]}]}),
            "anyOf or type lists",
        ),
        (
            json!({"type":"object","properties":{"a":{"type":"integer","minimum":1}}}),
            "minimum",
        ),
    ] {
        match Grammar::from_schema(&schema) {
            Err(GrammarError::Unsupported { feature: f, .. }) => {
                assert!(f.contains(feature), "{f} should name {feature}")
            }
            other => panic!("{schema} gave {other:?}"),
        }
    }
}

#[test]
fn oversized_schemas_are_refused() {
    // A wide and deep schema: more nodes than the limit.
    let mut s = json!({"type":"string"});
    for _ in 0..30 {
        let props: serde_json::Map<String, Value> =
            (0..64).map(|i| (format!("p{i}"), s.clone())).collect();
        s = json!({"type":"object","properties":props});
        if serde_json::to_string(&s).map(|t| t.len()).unwrap_or(0) > 1 << 20 {
            break;
        }
    }
    assert!(matches!(
        Grammar::from_schema(&s),
        Err(GrammarError::TooLarge { .. })
    ));
}

fn tiny_vocab() -> Vocab {
    let toks = [
        "{",
        "}",
        "\"",
        "\"age",
        "\":",
        "1",
        "12",
        ",",
        " ",
        "\"name\":\"",
        "x",
        "\"}",
        "\n",
        "é",
        "null",
        "true",
    ];
    let mut bytes: Vec<Option<Vec<u8>>> =
        toks.iter().map(|t| Some(t.as_bytes().to_vec())).collect();
    bytes.push(Some(vec![0xc3])); // half of é
    bytes.push(None); // a control token
    let stop = (bytes.len() - 1) as u32;
    Vocab::new(bytes, vec![stop])
}

proptest! {
    // The mask is exactly the set of tokens whose bytes the matcher accepts (and the stop
    // token exactly when the answer is whole), from every reachable state.
    #[test]
    fn masks_agree_with_feeding(picks in prop::collection::vec(0usize..1000, 0..24)) {
        let g = person();
        let vocab = tiny_vocab();
        let mut state = Matcher::new(&g);
        for p in picks {
            let mask = vocab.mask(&g, &state);
            for t in 0..vocab.len() as u32 {
                let mut probe = state.clone();
                prop_assert_eq!(mask.allows(t), vocab.advance(&g, &mut probe, t), "token {}", t);
            }
            let allowed: Vec<u32> = (0..vocab.len() as u32).filter(|&t| mask.allows(t)).collect();
            if allowed.is_empty() { break; }
            let t = allowed[p % allowed.len()];
            if vocab.stop_tokens().contains(&t) { break; }
            prop_assert!(vocab.advance(&g, &mut state, t));
        }
    }

    // Whatever the matcher accepts as whole parses and validates.
    #[test]
    fn accepted_texts_validate(age in -1000i64..1000, name in "[a-z\"\\\\é]{0,8}", nick in proptest::option::of("[a-z]{0,3}")) {
        let g = person();
        let mut v = json!({"age": age, "name": name});
        if let Some(n) = nick { v["nick"] = json!(n); }
        let text = serde_json::to_string(&v).expect("json");
        prop_assert!(accepts(&g, &text), "{}", text);
        prop_assert!(g.validate(&v).is_ok());
    }
}

fn byte_vocab() -> Vocab {
    let mut bytes: Vec<Option<Vec<u8>>> = (0..=255u8).map(|b| Some(vec![b])).collect();
    for t in [
        "\"name\"", "true", "null", "é", "\\u00e9", "{\"", "\":", "12", "-0.5e3", "\n  ",
    ] {
        bytes.push(Some(t.as_bytes().to_vec()));
    }
    bytes.push(None);
    let stop = (bytes.len() - 1) as u32;
    Vocab::new(bytes, vec![stop])
}

/// Walks the masks picking `picks` (closing tokens two times in three), checking every whole
/// answer on the way; returns how many it checked.
fn walk_and_check(picks: &[u16], which: usize) -> Result<usize, String> {
    let g = match which {
        0 => person(),
        1 => Grammar::json_object(),
        _ => Grammar::from_schema(&json!({"type": "array", "items": {"anyOf": [{"type": "integer"}, {"type": "null"}, {"type": "object", "properties": {"a": {"enum": ["x", 1, null]}}}]}, "maxItems": 3})).expect("compiles"),
    };
    let vocab = byte_vocab();
    let closers: Vec<u32> = [b'}', b']', b'"', b'1', b',']
        .iter()
        .map(|&b| u32::from(b))
        .collect();
    let mut state = Matcher::new(&g);
    let mut text = vec![];
    let mut checked = 0;
    for &p in picks {
        if state.accepting(&g) {
            let s = std::str::from_utf8(&text).map_err(|e| e.to_string())?;
            let v: Value = serde_json::from_str(s).map_err(|e| format!("{s}: {e}"))?;
            g.validate(&v).map_err(|e| format!("{s}: {e}"))?;
            checked += 1;
            if state.finished() {
                break;
            }
        }
        let mask = vocab.mask(&g, &state);
        let allowed: Vec<u32> = (0..vocab.len() as u32)
            .filter(|&t| mask.allows(t) && !vocab.stop_tokens().contains(&t))
            .collect();
        if allowed.is_empty() {
            return Err(format!("stuck after {:?}", String::from_utf8_lossy(&text)));
        }
        let close: Vec<u32> = closers
            .iter()
            .copied()
            .filter(|t| mask.allows(*t))
            .collect();
        let t = if p % 3 != 0 && !close.is_empty() {
            close[p as usize % close.len()]
        } else {
            allowed[p as usize % allowed.len()]
        };
        if !vocab.advance(&g, &mut state, t) {
            return Err("a masked-in token was refused".into());
        }
        text.extend_from_slice(vocab.token_bytes(t).unwrap_or_default());
    }
    Ok(checked)
}

#[test]
fn mask_walks_reach_whole_answers() {
    // The soundness property below is not vacuous: walks do end in whole answers.
    let mut whole = [0usize; 3];
    for (which, w) in whole.iter_mut().enumerate() {
        for seed in 0..40u16 {
            let picks: Vec<u16> = (0..300u16)
                .map(|i| i.wrapping_mul(7919).wrapping_add(seed.wrapping_mul(10_007)))
                .collect();
            *w += walk_and_check(&picks, which).expect("valid");
        }
    }
    assert!(whole.iter().all(|&w| w > 0), "{whole:?}");
}

proptest! {
    // Soundness: every text the masks let through to a whole answer is JSON that validates
    // against the schema, whatever tokens were picked.
    #[test]
    fn whole_answers_under_the_masks_are_valid(picks in prop::collection::vec(any::<u16>(), 1..300), which in 0usize..3) {
        walk_and_check(&picks, which).map_err(TestCaseError::fail)?;
    }
}
