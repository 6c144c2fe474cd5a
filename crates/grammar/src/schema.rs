//! JSON Schema (a subset) compiled to grammar nodes, and validation of a value against them.
//!
//! Supported: `type` (one or a list), `properties`, `required`, `additionalProperties`,
//! `items`, `minItems`, `maxItems`, `enum`, `const`, `anyOf` (alternatives that start with
//! different characters), and the annotations (`title`, `description`, `default`, ...).
//! Anything else is refused by name, so a request never gets a constraint weaker than it
//! asked for. Object properties are generated in the order `propertyOrdering` gives, the
//! others after them in byte order of their names, whatever order the schema lists them in:
//! the order must not depend on how a JSON parser keeps maps, because provider and verifier
//! must compute the same masks.

use serde_json::{Map, Value};

use crate::error::GrammarError;

/// Index of a node in a [`Grammar`].
pub type NodeId = u32;

/// Most nodes a compiled schema may have.
pub const MAX_NODES: usize = 2048;
/// Most bytes of literals (enum values, property names) a compiled schema may hold.
pub const MAX_LITERAL_BYTES: usize = 64 * 1024;
/// Most values in one `enum` and most properties of one object (masks are 64-bit).
pub const MAX_CHOICES: usize = 64;
/// Deepest nesting of schemas.
pub const MAX_SCHEMA_DEPTH: usize = 32;

pub(crate) const ANY: NodeId = 0;
pub(crate) const ANY_MAP: NodeId = 1;
pub(crate) const ANY_ARRAY: NodeId = 2;
pub(crate) const STRING: NodeId = 3;
pub(crate) const NUMBER: NodeId = 4;
pub(crate) const INTEGER: NodeId = 5;
pub(crate) const TRUE_FALSE_NULL: NodeId = 6;
const BOOLEAN: NodeId = 7;
const NULL: NodeId = 8;

/// What extra properties of an object with declared ones may be (for validation; generation
/// emits only declared properties).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Additional {
    Allowed,
    Forbidden,
    Schema(NodeId),
}

/// A declared property.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Prop {
    pub name: String,
    /// The name as a JSON string, quotes included.
    pub key: Vec<u8>,
    pub node: NodeId,
    pub required: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Node {
    Any,
    String,
    Number,
    Integer,
    /// One of these JSON texts (compact); `values` are the same, parsed.
    Literals {
        bytes: Vec<Vec<u8>>,
        values: Vec<Value>,
    },
    /// An object with declared properties, generated in `props` order.
    Object {
        props: Vec<Prop>,
        additional: Additional,
    },
    /// An object with any keys whose values are `values`.
    Map {
        values: NodeId,
    },
    Array {
        items: NodeId,
        min: u32,
        max: u32,
    },
    /// Alternatives whose first bytes differ.
    Union(Vec<NodeId>),
}

/// A compiled schema.
#[derive(Debug, Clone, PartialEq)]
pub struct Grammar {
    pub(crate) nodes: Vec<Node>,
    pub(crate) root: NodeId,
}

const ANNOTATIONS: &[&str] = &[
    "title",
    "description",
    "default",
    "examples",
    "$schema",
    "$comment",
    "$id",
    "deprecated",
    "readOnly",
    "writeOnly",
];
const KEYWORDS: &[&str] = &[
    "type",
    "enum",
    "const",
    "anyOf",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "minItems",
    "maxItems",
    "propertyOrdering",
];

fn literal(v: &Value) -> Vec<u8> {
    // Compact JSON of a value parsed from JSON cannot fail to serialize.
    serde_json::to_vec(v).unwrap_or_default()
}

struct Compiler {
    nodes: Vec<Node>,
    literal_bytes: usize,
}

fn unsupported(feature: impl Into<String>, path: &str) -> GrammarError {
    GrammarError::Unsupported {
        feature: feature.into(),
        path: if path.is_empty() {
            "/".into()
        } else {
            path.into()
        },
    }
}

fn invalid(path: &str, message: impl Into<String>) -> GrammarError {
    GrammarError::Invalid {
        path: if path.is_empty() {
            "/".into()
        } else {
            path.into()
        },
        message: message.into(),
    }
}

impl Compiler {
    fn add(&mut self, node: Node) -> Result<NodeId, GrammarError> {
        if self.nodes.len() >= MAX_NODES {
            return Err(GrammarError::TooLarge {
                nodes: self.nodes.len() + 1,
                limit: MAX_NODES,
            });
        }
        self.nodes.push(node);
        Ok((self.nodes.len() - 1) as NodeId)
    }

    fn count_literal(&mut self, n: usize) -> Result<(), GrammarError> {
        self.literal_bytes += n;
        if self.literal_bytes > MAX_LITERAL_BYTES {
            return Err(GrammarError::TooLarge {
                nodes: self.nodes.len(),
                limit: MAX_NODES,
            });
        }
        Ok(())
    }

    fn literals(&mut self, values: &[Value], path: &str) -> Result<NodeId, GrammarError> {
        if values.is_empty() {
            return Err(invalid(path, "enum must list at least one value"));
        }
        if values.len() > MAX_CHOICES {
            return Err(unsupported(
                format!("enum with more than {MAX_CHOICES} values"),
                path,
            ));
        }
        let bytes: Vec<Vec<u8>> = values.iter().map(literal).collect();
        self.count_literal(bytes.iter().map(Vec::len).sum())?;
        self.add(Node::Literals {
            bytes,
            values: values.to_vec(),
        })
    }

    fn schema(&mut self, v: &Value, path: &str, depth: usize) -> Result<NodeId, GrammarError> {
        if depth > MAX_SCHEMA_DEPTH {
            return Err(unsupported(
                format!("schemas nested deeper than {MAX_SCHEMA_DEPTH}"),
                path,
            ));
        }
        let map = match v {
            Value::Bool(true) => return Ok(ANY),
            Value::Bool(false) => return Err(unsupported("the `false` schema", path)),
            Value::Object(m) => m,
            _ => return Err(invalid(path, "a schema must be an object or a boolean")),
        };
        for key in map.keys() {
            if !ANNOTATIONS.contains(&key.as_str()) && !KEYWORDS.contains(&key.as_str()) {
                return Err(unsupported(key.clone(), path));
            }
        }
        if let Some(c) = map.get("const") {
            return self.literals(std::slice::from_ref(c), path);
        }
        if let Some(e) = map.get("enum") {
            let Value::Array(values) = e else {
                return Err(invalid(path, "enum must be an array"));
            };
            return self.literals(values, path);
        }
        if let Some(any_of) = map.get("anyOf") {
            let Value::Array(alts) = any_of else {
                return Err(invalid(path, "anyOf must be an array"));
            };
            if map
                .keys()
                .any(|k| k != "anyOf" && !ANNOTATIONS.contains(&k.as_str()))
            {
                return Err(unsupported("anyOf beside other keywords", path));
            }
            if alts.is_empty() {
                return Err(invalid(path, "anyOf must list at least one schema"));
            }
            let mut ids = vec![];
            for (i, alt) in alts.iter().enumerate() {
                ids.push(self.schema(alt, &format!("{path}/anyOf/{i}"), depth + 1)?);
            }
            return self.union(ids, path);
        }
        match map.get("type") {
            Some(Value::String(t)) => self.typed(t, map, path, depth),
            Some(Value::Array(ts)) => {
                if ts.is_empty() {
                    return Err(invalid(path, "type must name at least one type"));
                }
                let mut ids = vec![];
                for t in ts {
                    let Value::String(t) = t else {
                        return Err(invalid(path, "type must be a string or strings"));
                    };
                    ids.push(self.typed(t, map, path, depth)?);
                }
                self.union(ids, path)
            }
            Some(_) => Err(invalid(path, "type must be a string or strings")),
            None if map.contains_key("properties") || map.contains_key("additionalProperties") => {
                self.typed("object", map, path, depth)
            }
            None if map.contains_key("items") => self.typed("array", map, path, depth),
            None => Ok(ANY),
        }
    }

    fn union(&mut self, ids: Vec<NodeId>, path: &str) -> Result<NodeId, GrammarError> {
        if ids.len() == 1 {
            return Ok(ids[0]);
        }
        // Borrow the nodes as a grammar for the check (no copy), then put them back.
        let g = Grammar {
            nodes: std::mem::take(&mut self.nodes),
            root: ANY,
        };
        let mut seen = [false; 256];
        let mut overlap = false;
        for &id in &ids {
            for (b, s) in seen.iter_mut().enumerate() {
                if crate::matcher::starts(&g, id, b as u8) {
                    overlap |= *s;
                    *s = true;
                }
            }
        }
        self.nodes = g.nodes;
        if overlap {
            return Err(unsupported(
                "anyOf or type lists whose alternatives can start with the same character",
                path,
            ));
        }
        self.add(Node::Union(ids))
    }

    fn typed(
        &mut self,
        t: &str,
        map: &Map<String, Value>,
        path: &str,
        depth: usize,
    ) -> Result<NodeId, GrammarError> {
        match t {
            "string" => Ok(STRING),
            "number" => Ok(NUMBER),
            "integer" => Ok(INTEGER),
            "boolean" => Ok(BOOLEAN),
            "null" => Ok(NULL),
            "object" => self.object(map, path, depth),
            "array" => {
                let items = match map.get("items") {
                    None => ANY,
                    Some(s) => self.schema(s, &format!("{path}/items"), depth + 1)?,
                };
                let bound = |k: &str, default: u32| -> Result<u32, GrammarError> {
                    match map.get(k) {
                        None => Ok(default),
                        Some(v) => v
                            .as_u64()
                            .map(|n| n.min(u64::from(u32::MAX)) as u32)
                            .ok_or_else(|| invalid(path, format!("{k} must be a whole number"))),
                    }
                };
                let (min, max) = (bound("minItems", 0)?, bound("maxItems", u32::MAX)?);
                if min > max {
                    return Err(invalid(path, "minItems is over maxItems"));
                }
                if items == ANY && min == 0 && max == u32::MAX {
                    return Ok(ANY_ARRAY);
                }
                self.add(Node::Array { items, min, max })
            }
            other => Err(invalid(path, format!("unknown type `{other}`"))),
        }
    }

    fn object(
        &mut self,
        map: &Map<String, Value>,
        path: &str,
        depth: usize,
    ) -> Result<NodeId, GrammarError> {
        let additional = match map.get("additionalProperties") {
            None | Some(Value::Bool(true)) => Additional::Allowed,
            Some(Value::Bool(false)) => Additional::Forbidden,
            Some(s) => Additional::Schema(self.schema(
                s,
                &format!("{path}/additionalProperties"),
                depth + 1,
            )?),
        };
        let props = match map.get("properties") {
            None => Map::new(),
            Some(Value::Object(p)) => p.clone(),
            Some(_) => return Err(invalid(path, "properties must be an object")),
        };
        let required: Vec<&str> = match map.get("required") {
            None => vec![],
            Some(Value::Array(r)) => r
                .iter()
                .map(|v| {
                    v.as_str()
                        .ok_or_else(|| invalid(path, "required must list strings"))
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(invalid(path, "required must be an array")),
        };
        for r in &required {
            if !props.contains_key(*r) {
                return Err(unsupported(
                    format!("required property `{r}` that properties does not declare"),
                    path,
                ));
            }
        }
        if props.is_empty() {
            return match additional {
                Additional::Allowed => Ok(ANY_MAP),
                Additional::Schema(values) => self.add(Node::Map { values }),
                Additional::Forbidden => self.add(Node::Object {
                    props: vec![],
                    additional,
                }),
            };
        }
        if props.len() > MAX_CHOICES {
            return Err(unsupported(
                format!("objects with more than {MAX_CHOICES} properties"),
                path,
            ));
        }
        // `propertyOrdering` (as Gemini names it) lists properties to generate first, in
        // that order; the rest follow in byte order of their names.
        let mut names: Vec<&String> = vec![];
        if let Some(order) = map.get("propertyOrdering") {
            let Value::Array(order) = order else {
                return Err(invalid(path, "propertyOrdering must be an array"));
            };
            for o in order {
                let name = o
                    .as_str()
                    .and_then(|n| props.get_key_value(n).map(|(k, _)| k))
                    .ok_or_else(|| {
                        invalid(path, "propertyOrdering must list declared properties")
                    })?;
                if names.contains(&name) {
                    return Err(invalid(path, "propertyOrdering lists a property twice"));
                }
                names.push(name);
            }
        }
        let mut rest: Vec<&String> = props.keys().filter(|k| !names.contains(k)).collect();
        rest.sort();
        names.extend(rest);
        let mut out = vec![];
        for name in names {
            let node = self.schema(
                &props[name.as_str()],
                &format!("{path}/properties/{name}"),
                depth + 1,
            )?;
            let key = literal(&Value::String(name.clone()));
            self.count_literal(key.len())?;
            out.push(Prop {
                name: name.clone(),
                key,
                node,
                required: required.contains(&name.as_str()),
            });
        }
        self.add(Node::Object {
            props: out,
            additional,
        })
    }
}

impl Grammar {
    /// Compiles a JSON Schema given as JSON text.
    pub fn compile(schema: &str) -> Result<Grammar, GrammarError> {
        let v: Value =
            serde_json::from_str(schema).map_err(|e| GrammarError::NotJson(e.to_string()))?;
        Grammar::from_schema(&v)
    }

    /// Compiles a parsed JSON Schema.
    pub fn from_schema(schema: &Value) -> Result<Grammar, GrammarError> {
        let tfn = ["true", "false", "null"].map(|s| s.as_bytes().to_vec());
        let mut c = Compiler {
            nodes: vec![
                Node::Any,
                Node::Map { values: ANY },
                Node::Array {
                    items: ANY,
                    min: 0,
                    max: u32::MAX,
                },
                Node::String,
                Node::Number,
                Node::Integer,
                Node::Literals {
                    bytes: tfn.to_vec(),
                    values: vec![Value::Bool(true), Value::Bool(false), Value::Null],
                },
                Node::Literals {
                    bytes: tfn[..2].to_vec(),
                    values: vec![Value::Bool(true), Value::Bool(false)],
                },
                Node::Literals {
                    bytes: vec![tfn[2].clone()],
                    values: vec![Value::Null],
                },
            ],
            literal_bytes: 0,
        };
        let root = c.schema(schema, "", 0)?;
        Ok(Grammar {
            nodes: c.nodes,
            root,
        })
    }

    /// Any JSON object (`response_format: {"type": "json_object"}`).
    pub fn json_object() -> Grammar {
        let mut g = Grammar::from_schema(&Value::Object(Map::new())).unwrap_or_else(|_| {
            // The empty schema always compiles; this arm is never taken.
            Grammar {
                nodes: vec![],
                root: ANY,
            }
        });
        g.root = ANY_MAP;
        g
    }

    /// Nodes in the compiled grammar.
    pub fn size(&self) -> usize {
        self.nodes.len()
    }

    pub(crate) fn node(&self, id: NodeId) -> &Node {
        // Ids come from the compiler; an out-of-range id would be a bug, answered as `Any`.
        self.nodes.get(id as usize).unwrap_or(&Node::Any)
    }

    /// Checks a finished answer: `Err` says where it breaks the schema.
    pub fn validate(&self, value: &Value) -> Result<(), String> {
        self.check(self.root, value, "")
    }

    fn check(&self, id: NodeId, v: &Value, at: &str) -> Result<(), String> {
        let here = || if at.is_empty() { "/" } else { at };
        match self.node(id) {
            Node::Any => Ok(()),
            Node::String if v.is_string() => Ok(()),
            Node::String => Err(format!("{} is not a string", here())),
            Node::Number if v.is_number() => Ok(()),
            Node::Number => Err(format!("{} is not a number", here())),
            Node::Integer => {
                let whole =
                    v.is_i64() || v.is_u64() || v.as_f64().is_some_and(|f| f.fract() == 0.0);
                if whole {
                    Ok(())
                } else {
                    Err(format!("{} is not an integer", here()))
                }
            }
            Node::Literals { values, .. } => {
                if values.contains(v) {
                    Ok(())
                } else {
                    Err(format!("{} is not one of the allowed values", here()))
                }
            }
            Node::Object { props, additional } => {
                let Value::Object(m) = v else {
                    return Err(format!("{} is not an object", here()));
                };
                for p in props {
                    match m.get(&p.name) {
                        Some(x) => self.check(p.node, x, &format!("{at}/{}", p.name))?,
                        None if p.required => {
                            return Err(format!("{} lacks required property `{}`", here(), p.name))
                        }
                        None => {}
                    }
                }
                for (k, x) in m {
                    if props.iter().any(|p| &p.name == k) {
                        continue;
                    }
                    match additional {
                        Additional::Allowed => {}
                        Additional::Forbidden => {
                            return Err(format!(
                                "{} has property `{k}` the schema does not allow",
                                here()
                            ))
                        }
                        Additional::Schema(s) => self.check(*s, x, &format!("{at}/{k}"))?,
                    }
                }
                Ok(())
            }
            Node::Map { values } => {
                let Value::Object(m) = v else {
                    return Err(format!("{} is not an object", here()));
                };
                for (k, x) in m {
                    self.check(*values, x, &format!("{at}/{k}"))?;
                }
                Ok(())
            }
            Node::Array { items, min, max } => {
                let Value::Array(a) = v else {
                    return Err(format!("{} is not an array", here()));
                };
                if (a.len() as u64) < u64::from(*min) || (a.len() as u64) > u64::from(*max) {
                    return Err(format!(
                        "{} has {} items; the schema wants {min} to {max}",
                        here(),
                        a.len()
                    ));
                }
                for (i, x) in a.iter().enumerate() {
                    self.check(*items, x, &format!("{at}/{i}"))?;
                }
                Ok(())
            }
            Node::Union(alts) => {
                if alts.iter().any(|&a| self.check(a, v, at).is_ok()) {
                    Ok(())
                } else {
                    Err(format!("{} matches none of the alternatives", here()))
                }
            }
        }
    }
}
