//! Routing controls a request may give: the `provider` object (which providers, in what
//! order, at what price) and the `models` fallback list. The gateway parses and validates
//! them; the backend applies them when it picks providers.

use serde_json::{Map, Value};

/// Most providers one list (`order`, `only`, `ignore`) may name, and most fallback models.
pub const MAX_LISTED: usize = 32;

/// How to rank the eligible providers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortBy {
    /// Cheapest expected cost first (prompt and completion prices).
    Price,
    /// Highest measured output tokens per second first (unmeasured last).
    Throughput,
    /// Lowest measured time to first token first (unmeasured last).
    Latency,
}

/// The request's `provider` object. Providers are named by their ledger account (64 hex
/// characters, as receipts and `usage.provider` name them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderPrefs {
    /// Try these first, in this order.
    pub order: Vec<String>,
    /// Only these may serve (empty: any).
    pub only: Vec<String>,
    /// These never serve.
    pub ignore: Vec<String>,
    /// Rank the rest by this instead of the market's score.
    pub sort: Option<SortBy>,
    /// Highest price per million prompt tokens, base units.
    pub max_price_prompt: Option<u128>,
    /// Highest price per million completion tokens, base units.
    pub max_price_completion: Option<u128>,
    /// Only models whose quantization is one of these (case-insensitive; empty: any).
    pub quantizations: Vec<String>,
    /// With `false`, only the providers in `order` are tried (none else, even on failure).
    pub allow_fallbacks: bool,
}

impl Default for ProviderPrefs {
    fn default() -> Self {
        ProviderPrefs {
            order: Vec::new(),
            only: Vec::new(),
            ignore: Vec::new(),
            sort: None,
            max_price_prompt: None,
            max_price_completion: None,
            quantizations: Vec::new(),
            allow_fallbacks: true,
        }
    }
}

impl ProviderPrefs {
    /// Whether `provider` (hex account) may serve at all.
    pub fn admits(&self, provider: &str) -> bool {
        !self.ignore.iter().any(|p| p == provider)
            && (self.only.is_empty() || self.only.iter().any(|p| p == provider))
            && (self.allow_fallbacks || self.order.iter().any(|p| p == provider))
    }

    /// Whether a model of quantization `q` (None: unknown) may serve.
    pub fn admits_quantization(&self, q: Option<&str>) -> bool {
        self.quantizations.is_empty()
            || q.is_some_and(|q| self.quantizations.iter().any(|w| w.eq_ignore_ascii_case(q)))
    }
}

/// What parsing a routing field refuses: the message and the field at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingError {
    /// What is wrong.
    pub message: String,
    /// The field (`provider.order[1]`, `models`, ...).
    pub param: String,
}

fn err(param: impl Into<String>, message: impl Into<String>) -> RoutingError {
    RoutingError {
        message: message.into(),
        param: param.into(),
    }
}

fn strings(v: &Value, param: &str) -> Result<Vec<String>, RoutingError> {
    let Value::Array(items) = v else {
        return Err(err(
            param,
            format!("'{param}' must be an array of strings."),
        ));
    };
    if items.len() > MAX_LISTED {
        return Err(err(
            param,
            format!("'{param}' may name at most {MAX_LISTED} entries."),
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, x)| match x {
            Value::String(s) if !s.is_empty() => Ok(s.clone()),
            _ => Err(err(
                format!("{param}[{i}]"),
                format!("'{param}[{i}]' must be a non-empty string."),
            )),
        })
        .collect()
}

fn providers(v: &Value, param: &str) -> Result<Vec<String>, RoutingError> {
    let list = strings(v, param)?;
    list.into_iter()
        .enumerate()
        .map(|(i, p)| {
            let p = p.to_ascii_lowercase();
            if p.len() == 64 && p.bytes().all(|b| b.is_ascii_hexdigit()) {
                Ok(p)
            } else {
                Err(err(
                    format!("{param}[{i}]"),
                    format!(
                        "'{param}[{i}]' must name a provider by its account: 64 hex characters \
                         (as `usage.provider` shows)."
                    ),
                ))
            }
        })
        .collect()
}

/// A price: a non-negative integer or a decimal string of base units per million tokens.
fn price(v: &Value, param: &str) -> Result<Option<u128>, RoutingError> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => n.as_u64().map(|u| Some(u128::from(u))).ok_or_else(|| {
            err(
                param,
                format!(
                    "'{param}' must be a non-negative integer (base units per million tokens)."
                ),
            )
        }),
        Value::String(s) => s.parse::<u128>().map(Some).map_err(|_| {
            err(
                param,
                format!(
                    "'{param}' must be a non-negative integer (base units per million tokens)."
                ),
            )
        }),
        _ => Err(err(
            param,
            format!("'{param}' must be an integer or a decimal string."),
        )),
    }
}

/// Parses the `provider` object (absent or `null`: defaults).
pub fn parse_provider(v: Option<&Value>) -> Result<ProviderPrefs, RoutingError> {
    let mut prefs = ProviderPrefs::default();
    let o: &Map<String, Value> = match v {
        None | Some(Value::Null) => return Ok(prefs),
        Some(Value::Object(o)) => o,
        Some(_) => return Err(err("provider", "'provider' must be an object.")),
    };
    for (k, v) in o {
        if v.is_null() {
            continue;
        }
        let param = format!("provider.{k}");
        match k.as_str() {
            "order" => prefs.order = providers(v, &param)?,
            "only" => prefs.only = providers(v, &param)?,
            "ignore" => prefs.ignore = providers(v, &param)?,
            "quantizations" => prefs.quantizations = strings(v, &param)?,
            "allow_fallbacks" => match v {
                Value::Bool(b) => prefs.allow_fallbacks = *b,
                _ => return Err(err(param, "'provider.allow_fallbacks' must be a boolean.")),
            },
            "sort" => {
                prefs.sort = Some(match v.as_str() {
                    Some("price") => SortBy::Price,
                    Some("throughput") => SortBy::Throughput,
                    Some("latency") => SortBy::Latency,
                    _ => {
                        return Err(err(
                            param,
                            "'provider.sort' must be 'price', 'throughput' or 'latency'.",
                        ))
                    }
                })
            }
            "max_price" => {
                let Value::Object(m) = v else {
                    return Err(err(
                        param,
                        "'provider.max_price' must be an object {\"prompt\", \"completion\"}.",
                    ));
                };
                for (pk, pv) in m {
                    let pp = format!("provider.max_price.{pk}");
                    match pk.as_str() {
                        "prompt" => prefs.max_price_prompt = price(pv, &pp)?,
                        "completion" => prefs.max_price_completion = price(pv, &pp)?,
                        _ => {
                            return Err(err(
                                pp,
                                format!("Unknown field '{pk}' in 'provider.max_price' (use 'prompt' and 'completion', base units per million tokens)."),
                            ))
                        }
                    }
                }
            }
            // Other routers' fields that have no meaning here are refused rather than
            // silently ignored: a caller relying on them must know.
            other => {
                return Err(err(
                    param,
                    format!("Unknown routing field 'provider.{other}'; supported: order, only, ignore, sort, max_price, quantizations, allow_fallbacks."),
                ))
            }
        }
    }
    Ok(prefs)
}

/// Parses the `models` fallback list (absent: none).
pub fn parse_models(v: Option<&Value>) -> Result<Vec<String>, RoutingError> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(v) => strings(v, "models"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_every_field_and_refuses_bad_ones() {
        let a = "ab".repeat(32);
        let p = parse_provider(Some(&json!({
            "order": [a.to_uppercase()], "only": [a], "ignore": [], "sort": "latency",
            "max_price": {"prompt": 5, "completion": "7"}, "quantizations": ["q4_1"],
            "allow_fallbacks": false
        })))
        .unwrap();
        assert_eq!(p.order, vec![a.clone()]);
        assert_eq!(p.sort, Some(SortBy::Latency));
        assert_eq!(
            (p.max_price_prompt, p.max_price_completion),
            (Some(5), Some(7))
        );
        assert!(p.admits(&a) && !p.admits(&"cd".repeat(32)));
        assert!(p.admits_quantization(Some("Q4_1")) && !p.admits_quantization(None));
        for (bad, param) in [
            (json!({"order": ["nothex"]}), "provider.order[0]"),
            (json!({"sort": "random"}), "provider.sort"),
            (
                json!({"max_price": {"prompt": -1}}),
                "provider.max_price.prompt",
            ),
            (
                json!({"max_price": {"request": 1}}),
                "provider.max_price.request",
            ),
            (
                json!({"data_collection": "deny"}),
                "provider.data_collection",
            ),
            (json!({"allow_fallbacks": "no"}), "provider.allow_fallbacks"),
        ] {
            assert_eq!(
                parse_provider(Some(&bad)).unwrap_err().param,
                param,
                "{bad}"
            );
        }
        assert!(parse_provider(Some(&json!([]))).is_err());
        assert_eq!(
            parse_models(Some(&json!(["a", "b"]))).unwrap(),
            vec!["a", "b"]
        );
        assert!(parse_models(Some(&json!([""]))).is_err());
    }
}
