//! Endpoint content filters (`[[endpoints]] filter`): a CEL expression over
//! an event, compiled once when the configuration loads and evaluated per
//! event by the `cel` crate (Common Expression Language, the language of
//! Kubernetes admission rules and Envoy; not a parser of our own).
//!
//! The variables are `event` (the name, `lead.update`), `slug`, `verb`, and
//! the body's `before`, `after` and `diff` objects as maps, so
//! `after.stage == "won" && before.stage != "won"` selects a transition.
//! JSON numbers become CEL `int` when they are whole and fit, else `double`;
//! the other JSON values map one to one.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use cel::common::ast::{EntryExpr, Expr, MapExpr, StructExpr};
use cel::{Context, Env, IdedExpr, Program, Value};

/// The variables a filter may name.
pub const VARIABLES: [&str; 6] = ["event", "slug", "verb", "before", "after", "diff"];

/// The standard CEL environment, shared by every filter (compiling and
/// evaluating must use the same one).
fn env() -> &'static Arc<Env> {
    static ENV: OnceLock<Arc<Env>> = OnceLock::new();
    ENV.get_or_init(|| Arc::new(Env::stdlib()))
}

/// A compiled filter expression. Its `Debug` shows the expression.
#[derive(Clone)]
pub struct ContentFilter {
    source: String,
    program: Arc<Program>,
}

/// Why an expression does not compile: where (1-based line and column
/// within the expression) and what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column} of the expression: {message}")]
pub struct CompileError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Why a filter could not decide about one event (the event is then not
/// delivered to that endpoint).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EvalError {
    #[error("the event body is not a JSON object")]
    Body,
    #[error("{0}")]
    Execution(String),
    #[error("the expression gave {0}, not a bool")]
    NotBool(String),
}

impl ContentFilter {
    /// Compiles `source`; an error names the position and what is wrong,
    /// including a variable that is not one of [`VARIABLES`].
    pub fn compile(source: &str) -> Result<ContentFilter, CompileError> {
        let program = env().compile(source).map_err(|e| {
            let first = e.errors.first();
            let (line, column) = first.map_or((1, 1), |e| e.pos);
            CompileError {
                line: line.max(1) as usize,
                column: column.max(1) as usize,
                message: first.map_or_else(|| e.to_string(), |e| e.msg.clone()),
            }
        })?;
        if let Some((id, name)) = unknown_variable(program.expression(), &mut Vec::new()) {
            let offset = program.source_info().offset_for(id).map_or(0, |o| o.0);
            let (line, column) = line_column(source, offset as usize);
            return Err(CompileError {
                line,
                column,
                message: format!(
                    "unknown variable `{name}`; expected one of {}",
                    VARIABLES.join(", ")
                ),
            });
        }
        Ok(ContentFilter {
            source: source.to_owned(),
            program: Arc::new(program),
        })
    }

    /// The expression as configured.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the event `input` describes passes this filter.
    pub fn matches(&self, input: &FilterInput) -> Result<bool, EvalError> {
        let mut ctx = Context::with_env(env().clone());
        for (name, value) in &input.vars {
            ctx.add_variable_from_value(*name, value.clone());
        }
        match self.program.execute(&ctx) {
            Ok(Value::Bool(b)) => Ok(b),
            Ok(other) => Err(EvalError::NotBool(other.type_of().to_string())),
            Err(e) => Err(EvalError::Execution(e.to_string())),
        }
    }
}

impl std::fmt::Debug for ContentFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ContentFilter").field(&self.source).finish()
    }
}

/// CEL's type names, which parse as identifiers (`type(x) == int`).
const TYPE_NAMES: [&str; 10] = [
    "int",
    "uint",
    "double",
    "bool",
    "string",
    "bytes",
    "list",
    "map",
    "null_type",
    "type",
];

/// The first identifier in `e` that is neither a filter variable, a type
/// name, nor bound by an enclosing comprehension (`all(k, ...)`), with its
/// node id.
fn unknown_variable(e: &IdedExpr, bound: &mut Vec<String>) -> Option<(u64, String)> {
    let walk = unknown_variable;
    match &e.expr {
        Expr::Ident(name) => {
            let known = name.starts_with('@')
                || VARIABLES.contains(&name.as_str())
                || TYPE_NAMES.contains(&name.as_str())
                || bound.contains(name);
            (!known).then(|| (e.id, name.clone()))
        }
        Expr::Call(call) => call
            .target
            .iter()
            .map(|t| &**t)
            .chain(&call.args)
            .find_map(|a| walk(a, bound)),
        Expr::Comprehension(c) => {
            if let Some(found) = walk(&c.iter_range, bound).or_else(|| walk(&c.accu_init, bound)) {
                return Some(found);
            }
            let depth = bound.len();
            bound.extend([c.iter_var.clone(), c.accu_var.clone()]);
            bound.extend(c.iter_var2.clone());
            let found = [&c.loop_cond, &c.loop_step, &c.result]
                .into_iter()
                .find_map(|x| walk(x, bound));
            bound.truncate(depth);
            found
        }
        Expr::List(list) => list.elements.iter().find_map(|x| walk(x, bound)),
        Expr::Map(MapExpr { entries }) | Expr::Struct(StructExpr { entries, .. }) => {
            entries.iter().find_map(|entry| match &entry.expr {
                EntryExpr::StructField(f) => walk(&f.value, bound),
                EntryExpr::MapEntry(m) => walk(&m.key, bound).or_else(|| walk(&m.value, bound)),
            })
        }
        Expr::Select(select) => walk(&select.operand, bound),
        Expr::Literal(_) | Expr::Unspecified => None,
    }
}

/// The 1-based line and column of character `offset` in `source`.
fn line_column(source: &str, offset: usize) -> (usize, usize) {
    let (mut line, mut column) = (1, 1);
    for c in source.chars().take(offset) {
        if c == '\n' {
            (line, column) = (line + 1, 1);
        } else {
            column += 1;
        }
    }
    (line, column)
}

/// One event's variables, built once and shared by every filter that looks
/// at the event.
pub struct FilterInput {
    vars: Vec<(&'static str, Value)>,
}

impl FilterInput {
    /// The variables of event `name` (`slug.verb`) with `body`
    /// (`{"before":..,"after":..,"diff":..}`).
    pub fn new(name: &str, body: &[u8]) -> Result<FilterInput, EvalError> {
        let serde_json::Value::Object(mut body) =
            serde_json::from_slice(body).map_err(|_| EvalError::Body)?
        else {
            return Err(EvalError::Body);
        };
        let (slug, verb) = name.split_once('.').unwrap_or((name, ""));
        let mut vars = vec![
            ("event", Value::from(name.to_owned())),
            ("slug", Value::from(slug.to_owned())),
            ("verb", Value::from(verb.to_owned())),
        ];
        for key in ["before", "after", "diff"] {
            let value = body.remove(key).unwrap_or_default();
            vars.push((key, cel_value(value)));
        }
        Ok(FilterInput { vars })
    }
}

/// A JSON value as a CEL value. Numbers are read from their text (the
/// body keeps Postgres' digits): whole ones that fit are `int` (or `uint`),
/// the rest `double`.
fn cel_value(v: serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(b),
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::Int(i)
            } else if let Some(u) = n.as_u64() {
                Value::UInt(u)
            } else {
                Value::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        serde_json::Value::String(s) => Value::from(s),
        serde_json::Value::Array(items) => {
            Value::List(Arc::new(items.into_iter().map(cel_value).collect()))
        }
        serde_json::Value::Object(map) => {
            let map: HashMap<String, Value> =
                map.into_iter().map(|(k, v)| (k, cel_value(v))).collect();
            Value::from(map)
        }
    }
}

#[cfg(test)]
mod tests;
