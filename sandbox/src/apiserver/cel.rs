//! A small evaluator for the subset of CEL used in CRD `x-kubernetes-validations` rules:
//! literals, `self`/`oldSelf` field access, `has()`, `size()`, string functions (`matches`,
//! `startsWith`, `endsWith`, `contains`, `lowerAscii`, `upperAscii`, `trim`), arithmetic,
//! comparisons, `in`, `&&`/`||` (commutative with errors), `?:`, lists, maps, the
//! `all`/`exists`/`exists_one`/`map`/`filter` macros, and `duration()` with comparisons.

use serde_json::{Map, Number, Value, json};
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Int(i64),
    Double(f64),
    Str(String),
    Op(&'static str),
}

const OPS: &[&str] = &[
    "&&", "||", "==", "!=", "<=", ">=", "(", ")", "[", "]", "{", "}", ".", ",", ":", "?", "!", "-", "+", "*", "/", "%",
    "<", ">",
];

fn lex(src: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = src.chars().collect();
    let mut i = 0;
    let mut out = vec![];
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            // raw string r'..'
            if (word == "r" || word == "R") && i < chars.len() && (chars[i] == '\'' || chars[i] == '"') {
                let q = chars[i];
                i += 1;
                let start = i;
                while i < chars.len() && chars[i] != q {
                    i += 1;
                }
                out.push(Tok::Str(chars[start..i].iter().collect()));
                i += 1;
                continue;
            }
            out.push(Tok::Ident(word));
            continue;
        }
        if c.is_ascii_digit() {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.' || chars[i] == 'e') {
                if chars[i] == '.' && !(i + 1 < chars.len() && chars[i + 1].is_ascii_digit()) {
                    break;
                }
                i += 1;
            }
            let s: String = chars[start..i].iter().collect();
            if i < chars.len() && (chars[i] == 'u' || chars[i] == 'U') {
                i += 1;
            }
            if s.contains('.') || s.contains('e') {
                out.push(Tok::Double(s.parse().map_err(|_| format!("bad number {s}"))?));
            } else {
                out.push(Tok::Int(s.parse().map_err(|_| format!("bad number {s}"))?));
            }
            continue;
        }
        if c == '\'' || c == '"' {
            let q = c;
            i += 1;
            let mut s = String::new();
            while i < chars.len() && chars[i] != q {
                if chars[i] == '\\' && i + 1 < chars.len() {
                    i += 1;
                    s.push(match chars[i] {
                        'n' => '\n',
                        't' => '\t',
                        'r' => '\r',
                        other => other,
                    });
                } else {
                    s.push(chars[i]);
                }
                i += 1;
            }
            if i >= chars.len() {
                return Err("unterminated string".into());
            }
            i += 1;
            out.push(Tok::Str(s));
            continue;
        }
        let rest: String = chars[i..chars.len().min(i + 2)].iter().collect();
        match OPS.iter().find(|op| rest.starts_with(**op)) {
            Some(op) => {
                out.push(Tok::Op(op));
                i += op.len();
            }
            None => return Err(format!("Syntax error: token recognition error at: '{c}'")),
        }
    }
    Ok(out)
}

#[derive(Debug, Clone)]
enum Expr {
    Lit(Value),
    Ident(String),
    Member(Box<Expr>, String),
    Index(Box<Expr>, Box<Expr>),
    Call(Option<Box<Expr>>, String, Vec<Expr>),
    List(Vec<Expr>),
    MapLit(Vec<(Expr, Expr)>),
    Not(Box<Expr>),
    Neg(Box<Expr>),
    Bin(&'static str, Box<Expr>, Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Cond(Box<Expr>, Box<Expr>, Box<Expr>),
    Has(Box<Expr>, String),
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }
    fn is_op(&self, op: &str) -> bool {
        matches!(self.peek(), Some(Tok::Op(o)) if *o == op)
    }
    fn eat(&mut self, op: &str) -> bool {
        if self.is_op(op) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn expect(&mut self, op: &str) -> Result<(), String> {
        if self.eat(op) { Ok(()) } else { Err(format!("Syntax error: expected '{op}'")) }
    }
    fn expr(&mut self) -> Result<Expr, String> {
        let c = self.or()?;
        if self.eat("?") {
            let a = self.expr()?;
            self.expect(":")?;
            let b = self.expr()?;
            return Ok(Expr::Cond(Box::new(c), Box::new(a), Box::new(b)));
        }
        Ok(c)
    }
    fn or(&mut self) -> Result<Expr, String> {
        let mut l = self.and()?;
        while self.eat("||") {
            let r = self.and()?;
            l = Expr::Or(Box::new(l), Box::new(r));
        }
        Ok(l)
    }
    fn and(&mut self) -> Result<Expr, String> {
        let mut l = self.rel()?;
        while self.eat("&&") {
            let r = self.rel()?;
            l = Expr::And(Box::new(l), Box::new(r));
        }
        Ok(l)
    }
    fn rel(&mut self) -> Result<Expr, String> {
        let mut l = self.add()?;
        loop {
            let op = match self.peek() {
                Some(Tok::Op(o)) if ["==", "!=", "<", "<=", ">", ">="].contains(o) => *o,
                Some(Tok::Ident(w)) if w == "in" => "in",
                _ => break,
            };
            self.pos += 1;
            let r = self.add()?;
            l = Expr::Bin(op, Box::new(l), Box::new(r));
        }
        Ok(l)
    }
    fn add(&mut self) -> Result<Expr, String> {
        let mut l = self.mul()?;
        loop {
            let op = if self.eat("+") {
                "+"
            } else if self.eat("-") {
                "-"
            } else {
                break;
            };
            let r = self.mul()?;
            l = Expr::Bin(op, Box::new(l), Box::new(r));
        }
        Ok(l)
    }
    fn mul(&mut self) -> Result<Expr, String> {
        let mut l = self.unary()?;
        loop {
            let op = if self.eat("*") {
                "*"
            } else if self.eat("/") {
                "/"
            } else if self.eat("%") {
                "%"
            } else {
                break;
            };
            let r = self.unary()?;
            l = Expr::Bin(op, Box::new(l), Box::new(r));
        }
        Ok(l)
    }
    fn unary(&mut self) -> Result<Expr, String> {
        if self.eat("!") {
            return Ok(Expr::Not(Box::new(self.unary()?)));
        }
        if self.eat("-") {
            return Ok(Expr::Neg(Box::new(self.unary()?)));
        }
        self.member()
    }
    fn args(&mut self) -> Result<Vec<Expr>, String> {
        let mut args = vec![];
        if !self.eat(")") {
            loop {
                args.push(self.expr()?);
                if self.eat(")") {
                    break;
                }
                self.expect(",")?;
            }
        }
        Ok(args)
    }
    fn member(&mut self) -> Result<Expr, String> {
        let mut e = self.primary()?;
        loop {
            if self.eat(".") {
                let name = match self.peek().cloned() {
                    Some(Tok::Ident(n)) => n,
                    _ => return Err("Syntax error: expected field name".into()),
                };
                self.pos += 1;
                if self.eat("(") {
                    let args = self.args()?;
                    e = Expr::Call(Some(Box::new(e)), name, args);
                } else {
                    e = Expr::Member(Box::new(e), name);
                }
            } else if self.eat("[") {
                let idx = self.expr()?;
                self.expect("]")?;
                e = Expr::Index(Box::new(e), Box::new(idx));
            } else {
                break;
            }
        }
        Ok(e)
    }
    fn primary(&mut self) -> Result<Expr, String> {
        let t = self.peek().cloned().ok_or("Syntax error: unexpected end of expression")?;
        self.pos += 1;
        match t {
            Tok::Int(i) => Ok(Expr::Lit(json!(i))),
            Tok::Double(d) => Ok(Expr::Lit(json!(d))),
            Tok::Str(s) => Ok(Expr::Lit(Value::String(s))),
            Tok::Ident(w) => match w.as_str() {
                "true" => Ok(Expr::Lit(Value::Bool(true))),
                "false" => Ok(Expr::Lit(Value::Bool(false))),
                "null" => Ok(Expr::Lit(Value::Null)),
                _ if self.is_op("(") => {
                    self.pos += 1;
                    let args = self.args()?;
                    if w == "has" {
                        return match args.into_iter().next() {
                            Some(Expr::Member(base, f)) => Ok(Expr::Has(base, f)),
                            _ => Err("invalid argument to has() macro".into()),
                        };
                    }
                    Ok(Expr::Call(None, w, args))
                }
                _ => Ok(Expr::Ident(w)),
            },
            Tok::Op("(") => {
                let e = self.expr()?;
                self.expect(")")?;
                Ok(e)
            }
            Tok::Op("[") => {
                let mut items = vec![];
                if !self.eat("]") {
                    loop {
                        items.push(self.expr()?);
                        if self.eat("]") {
                            break;
                        }
                        self.expect(",")?;
                    }
                }
                Ok(Expr::List(items))
            }
            Tok::Op("{") => {
                let mut items = vec![];
                if !self.eat("}") {
                    loop {
                        let k = self.expr()?;
                        self.expect(":")?;
                        let v = self.expr()?;
                        items.push((k, v));
                        if self.eat("}") {
                            break;
                        }
                        self.expect(",")?;
                    }
                }
                Ok(Expr::MapLit(items))
            }
            other => Err(format!("Syntax error: unexpected {other:?}")),
        }
    }
}

/// A compiled rule.
#[derive(Debug, Clone)]
pub struct Program(Expr);

/// Compiled rules and patterns by source: a CRD's rules and `pattern`s (and CEL `matches`) run
/// on every write of its objects.
type Compiled<T, E> = LazyLock<Mutex<HashMap<String, Result<Arc<T>, E>>>>;

fn compiled_once<T, E: Clone>(
    cache: &Compiled<T, E>,
    src: &str,
    compile: impl FnOnce(&str) -> Result<T, E>,
) -> Result<Arc<T>, E> {
    let mut cache = cache.lock().unwrap();
    if cache.len() > 10_000 {
        cache.clear();
    }
    cache.entry(src.to_string()).or_insert_with(|| compile(src).map(Arc::new)).clone()
}

/// `src` compiled, once.
pub fn compiled(src: &str) -> Result<Arc<Program>, String> {
    static PROGRAMS: Compiled<Program, String> = LazyLock::new(Default::default);
    compiled_once(&PROGRAMS, src, compile)
}

/// `pattern` compiled, once.
pub fn regex(pattern: &str) -> Result<Arc<regex::Regex>, regex::Error> {
    static REGEXES: Compiled<regex::Regex, regex::Error> = LazyLock::new(Default::default);
    compiled_once(&REGEXES, pattern, regex::Regex::new)
}

pub fn compile(src: &str) -> Result<Program, String> {
    let toks = lex(src)?;
    let mut p = Parser { toks, pos: 0 };
    let e = p.expr()?;
    if p.pos != p.toks.len() {
        return Err(format!("Syntax error: unexpected token at position {}", p.pos));
    }
    Ok(Program(e))
}

type Vars = Vec<(String, Value)>;

fn num(v: &Value) -> Option<f64> {
    v.as_f64()
}

fn truthy(v: Value) -> Result<bool, String> {
    v.as_bool().ok_or_else(|| format!("no such overload: expected bool, got {v}"))
}

fn values_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

fn int_or_double(f: f64, ints: bool) -> Value {
    if ints { json!(f as i64) } else { Value::Number(Number::from_f64(f).unwrap_or(Number::from(0))) }
}

impl Program {
    /// Evaluate with `self` (and optionally `oldSelf`) bound.
    pub fn eval(&self, self_val: &Value, old_self: Option<&Value>) -> Result<Value, String> {
        let mut vars: Vars = vec![("self".into(), self_val.clone())];
        if let Some(o) = old_self {
            vars.push(("oldSelf".into(), o.clone()));
        }
        eval(&self.0, &mut vars)
    }
}

fn eval(e: &Expr, vars: &mut Vars) -> Result<Value, String> {
    match e {
        Expr::Lit(v) => Ok(v.clone()),
        Expr::Ident(n) => vars
            .iter()
            .rev()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
            .ok_or_else(|| format!("undeclared reference to '{n}'")),
        Expr::Member(base, f) => {
            let b = eval(base, vars)?;
            match b {
                Value::Object(m) => m.get(f).cloned().ok_or_else(|| format!("no such key: {f}")),
                other => Err(format!("no such key: {f} (on {other})")),
            }
        }
        Expr::Has(base, f) => {
            let b = eval(base, vars)?;
            Ok(Value::Bool(b.as_object().is_some_and(|m| m.contains_key(f))))
        }
        Expr::Index(base, idx) => {
            let b = eval(base, vars)?;
            let i = eval(idx, vars)?;
            match (&b, &i) {
                (Value::Array(a), Value::Number(n)) => {
                    let n = n.as_i64().ok_or("invalid index")?;
                    a.get(n as usize).cloned().ok_or_else(|| format!("index out of bounds: {n}"))
                }
                (Value::Object(m), Value::String(k)) => m.get(k).cloned().ok_or_else(|| format!("no such key: {k}")),
                _ => Err("no such overload: index".into()),
            }
        }
        Expr::List(items) => Ok(Value::Array(items.iter().map(|i| eval(i, vars)).collect::<Result<_, _>>()?)),
        Expr::MapLit(items) => {
            let mut m = Map::new();
            for (k, v) in items {
                let k = eval(k, vars)?;
                let k = k.as_str().map(String::from).unwrap_or_else(|| k.to_string());
                m.insert(k, eval(v, vars)?);
            }
            Ok(Value::Object(m))
        }
        Expr::Not(x) => Ok(Value::Bool(!truthy(eval(x, vars)?)?)),
        Expr::Neg(x) => match eval(x, vars)? {
            Value::Number(n) if n.is_i64() => Ok(json!(-n.as_i64().unwrap_or(0))),
            Value::Number(n) => Ok(int_or_double(-n.as_f64().unwrap_or(0.0), false)),
            _ => Err("no such overload: -_".into()),
        },
        Expr::And(a, b) => {
            let l = eval(a, vars).and_then(truthy);
            if l == Ok(false) {
                return Ok(Value::Bool(false));
            }
            let r = eval(b, vars).and_then(truthy);
            match (l, r) {
                (_, Ok(false)) => Ok(Value::Bool(false)),
                (Ok(true), Ok(true)) => Ok(Value::Bool(true)),
                (Err(e), _) | (_, Err(e)) => Err(e),
                _ => Ok(Value::Bool(false)),
            }
        }
        Expr::Or(a, b) => {
            let l = eval(a, vars).and_then(truthy);
            if l == Ok(true) {
                return Ok(Value::Bool(true));
            }
            let r = eval(b, vars).and_then(truthy);
            match (l, r) {
                (_, Ok(true)) => Ok(Value::Bool(true)),
                (Ok(false), Ok(false)) => Ok(Value::Bool(false)),
                (Err(e), _) | (_, Err(e)) => Err(e),
                _ => Ok(Value::Bool(false)),
            }
        }
        Expr::Cond(c, a, b) => {
            if truthy(eval(c, vars)?)? {
                eval(a, vars)
            } else {
                eval(b, vars)
            }
        }
        Expr::Bin(op, a, b) => {
            let l = eval(a, vars)?;
            let r = eval(b, vars)?;
            binary(op, &l, &r)
        }
        Expr::Call(target, name, args) => call(target.as_deref(), name, args, vars),
    }
}

fn binary(op: &str, l: &Value, r: &Value) -> Result<Value, String> {
    match op {
        "==" => Ok(Value::Bool(values_equal(l, r))),
        "!=" => Ok(Value::Bool(!values_equal(l, r))),
        "in" => match r {
            Value::Array(a) => Ok(Value::Bool(a.iter().any(|x| values_equal(x, l)))),
            Value::Object(m) => Ok(Value::Bool(l.as_str().is_some_and(|k| m.contains_key(k)))),
            _ => Err("no such overload: in".into()),
        },
        "<" | "<=" | ">" | ">=" => {
            let ord = match (l, r) {
                (Value::String(a), Value::String(b)) => a.cmp(b),
                _ if as_duration(l).is_some() || as_duration(r).is_some() => {
                    let (a, b) = (as_duration(l).ok_or("no such overload")?, as_duration(r).ok_or("no such overload")?);
                    a.cmp(&b)
                }
                _ => {
                    let (a, b) = (num(l).ok_or("no such overload")?, num(r).ok_or("no such overload")?);
                    a.partial_cmp(&b).ok_or("no such overload")?
                }
            };
            use std::cmp::Ordering::*;
            Ok(Value::Bool(match op {
                "<" => ord == Less,
                "<=" => ord != Greater,
                ">" => ord == Greater,
                _ => ord != Less,
            }))
        }
        "+" => match (l, r) {
            (Value::String(a), Value::String(b)) => Ok(Value::String(format!("{a}{b}"))),
            (Value::Array(a), Value::Array(b)) => Ok(Value::Array(a.iter().chain(b.iter()).cloned().collect())),
            _ => arith(op, l, r),
        },
        _ => arith(op, l, r),
    }
}

fn arith(op: &str, l: &Value, r: &Value) -> Result<Value, String> {
    let ints = l.is_i64() && r.is_i64();
    if ints {
        let (a, b) = (l.as_i64().unwrap_or(0), r.as_i64().unwrap_or(0));
        let v = match op {
            "+" => a.checked_add(b),
            "-" => a.checked_sub(b),
            "*" => a.checked_mul(b),
            "/" => a.checked_div(b),
            "%" => a.checked_rem(b),
            _ => None,
        };
        return v.map(|v| json!(v)).ok_or_else(|| "integer overflow or division by zero".into());
    }
    let (a, b) = (num(l).ok_or(format!("no such overload: {op}"))?, num(r).ok_or(format!("no such overload: {op}"))?);
    let v = match op {
        "+" => a + b,
        "-" => a - b,
        "*" => a * b,
        "/" => a / b,
        _ => return Err(format!("no such overload: {op}")),
    };
    Ok(int_or_double(v, false))
}

fn size(v: &Value) -> Result<Value, String> {
    Ok(json!(match v {
        Value::String(s) => s.chars().count(),
        Value::Array(a) => a.len(),
        Value::Object(m) => m.len(),
        _ => return Err("no such overload: size".into()),
    }))
}

fn call(target: Option<&Expr>, name: &str, args: &[Expr], vars: &mut Vars) -> Result<Value, String> {
    // macros
    if let (Some(t), "all" | "exists" | "exists_one" | "map" | "filter") = (target, name) {
        let coll = eval(t, vars)?;
        let items: Vec<Value> = match coll {
            Value::Array(a) => a,
            Value::Object(m) => m.keys().map(|k| Value::String(k.clone())).collect(),
            _ => return Err(format!("no such overload: {name}")),
        };
        let var = match args.first() {
            Some(Expr::Ident(v)) => v.clone(),
            _ => return Err(format!("{name}() variable name must be a simple identifier")),
        };
        let body = args.get(1).ok_or("missing macro body")?;
        let mut results = vec![];
        for it in items {
            vars.push((var.clone(), it.clone()));
            let r = eval(body, vars);
            vars.pop();
            results.push((it, r?));
        }
        return Ok(match name {
            "all" => Value::Bool(results.iter().all(|(_, r)| r.as_bool() == Some(true))),
            "exists" => Value::Bool(results.iter().any(|(_, r)| r.as_bool() == Some(true))),
            "exists_one" => Value::Bool(results.iter().filter(|(_, r)| r.as_bool() == Some(true)).count() == 1),
            "map" => Value::Array(results.into_iter().map(|(_, r)| r).collect()),
            _ => Value::Array(results.into_iter().filter(|(_, r)| r.as_bool() == Some(true)).map(|(i, _)| i).collect()),
        });
    }
    let mut vals = vec![];
    if let Some(t) = target {
        vals.push(eval(t, vars)?);
    }
    for a in args {
        vals.push(eval(a, vars)?);
    }
    let s = |i: usize| -> Result<&str, String> {
        vals.get(i).and_then(|v| v.as_str()).ok_or_else(|| format!("no such overload: {name}"))
    };
    match name {
        "size" => size(vals.first().ok_or("size() needs an argument")?),
        "matches" => {
            let re = regex(s(1)?).map_err(|e| format!("invalid regex: {e}"))?;
            Ok(Value::Bool(re.is_match(s(0)?)))
        }
        "startsWith" => Ok(Value::Bool(s(0)?.starts_with(s(1)?))),
        "endsWith" => Ok(Value::Bool(s(0)?.ends_with(s(1)?))),
        "contains" => Ok(Value::Bool(s(0)?.contains(s(1)?))),
        "lowerAscii" => Ok(Value::String(s(0)?.to_ascii_lowercase())),
        "upperAscii" => Ok(Value::String(s(0)?.to_ascii_uppercase())),
        "trim" => Ok(Value::String(s(0)?.trim().to_string())),
        "string" => Ok(match &vals[0] {
            Value::String(x) => Value::String(x.clone()),
            other => Value::String(other.to_string()),
        }),
        "int" => match &vals[0] {
            Value::Number(n) => Ok(json!(n.as_f64().unwrap_or(0.0) as i64)),
            Value::String(x) => x.parse::<i64>().map(|i| json!(i)).map_err(|e| e.to_string()),
            _ => Err("no such overload: int".into()),
        },
        "duration" => parse_go_duration(s(0)?).map(|nanos| json!({ DURATION: nanos })).ok_or_else(|| {
            format!(
                "type conversion error from 'string' to 'google.protobuf.Duration': invalid duration {:?}",
                s(0).unwrap_or_default()
            )
        }),
        "double" => num(&vals[0]).map(|f| int_or_double(f, false)).ok_or_else(|| "no such overload: double".into()),
        _ => Err(format!("undeclared reference to '{name}'")),
    }
}

/// A CEL duration, held as a JSON object under a key no Kubernetes object can have.
const DURATION: &str = "\u{0}duration_ns";

fn as_duration(v: &Value) -> Option<i64> {
    v.get(DURATION)?.as_i64()
}

/// Go's `time.ParseDuration`, which `duration()` uses: an optional sign, then numbers with
/// optional fractions, each with a unit (`ns`, `us`, `µs`, `ms`, `s`, `m`, `h`); `0` alone is
/// allowed; more than an int64 of nanoseconds is invalid.
fn parse_go_duration(text: &str) -> Option<i64> {
    let (negative, mut rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let whole_len = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        let whole: u128 = if whole_len == 0 { 0 } else { rest[..whole_len].parse().ok()? };
        rest = &rest[whole_len..];
        let (mut fraction, mut scale, mut fraction_len) = (0u128, 1u128, 0);
        if let Some(after_point) = rest.strip_prefix('.') {
            fraction_len = after_point.find(|c: char| !c.is_ascii_digit()).unwrap_or(after_point.len());
            // Digits past nanosecond precision change nothing, as in Go.
            for digit in after_point[..fraction_len].bytes().take(18) {
                fraction = fraction * 10 + u128::from(digit - b'0');
                scale *= 10;
            }
            rest = &after_point[fraction_len..];
        }
        if whole_len == 0 && fraction_len == 0 {
            return None;
        }
        let unit_len = rest.find(|c: char| c == '.' || c.is_ascii_digit()).unwrap_or(rest.len());
        let nanos_per_unit: u128 = match &rest[..unit_len] {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total = total.checked_add(whole.checked_mul(nanos_per_unit)? + fraction * nanos_per_unit / scale)?;
        if total > 1 << 63 {
            return None;
        }
    }
    let total = i128::try_from(total).ok()?;
    i64::try_from(if negative { -total } else { total }).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(rule: &str, v: Value) -> Result<Value, String> {
        compile(rule)?.eval(&v, None)
    }

    #[test]
    fn indicator_rules() {
        let r = "self.type != 'FileSha256' || self.value.matches('^[0-9a-fA-F]{64}$')";
        assert_eq!(run(r, json!({"type": "FileSha256", "value": "abc"})), Ok(json!(false)));
        assert_eq!(run(r, json!({"type": "FileSha256", "value": "a".repeat(64)})), Ok(json!(true)));
        assert_eq!(run(r, json!({"type": "Url", "value": "x"})), Ok(json!(true)));
        let h = "has(self.state) || has(self.code)";
        assert_eq!(run(h, json!({"state": "X"})), Ok(json!(true)));
        assert_eq!(run(h, json!({})), Ok(json!(false)));
    }

    #[test]
    fn operators_and_macros() {
        assert_eq!(run("size(self.a) == 2 && self.a.all(x, x > 0)", json!({"a": [1, 2]})), Ok(json!(true)));
        assert_eq!(run("self.a.exists(x, x == 'b') ? 1 : 2", json!({"a": ["a", "b"]})), Ok(json!(1)));
        assert_eq!(run("'b' in self.a && self.n * 2 + 1 >= 5", json!({"a": ["b"], "n": 2})), Ok(json!(true)));
        assert_eq!(run("self.missing == 1 || true", json!({})), Ok(json!(true)));
        assert!(run("self.missing == 1", json!({})).is_err());
        assert_eq!(run("self.s.startsWith('ab') && !self.s.endsWith('x')", json!({"s": "abc"})), Ok(json!(true)));
        assert_eq!(run("self.m.filter(k, k != 'a').size()", json!({"m": {"a": 1, "b": 2}})), Ok(json!(1)));
    }

    #[test]
    fn durations_parse_as_go_does_and_compare() {
        let at_most = "duration(self) <= duration('87600h')";
        assert_eq!(run(at_most, json!("720h")), Ok(json!(true)));
        assert_eq!(run(at_most, json!("87600h")), Ok(json!(true)));
        assert_eq!(run(at_most, json!("87600h1ns")), Ok(json!(false)));
        assert_eq!(run(at_most, json!("1.5h30m")), Ok(json!(true)));
        assert_eq!(run("duration(self) == duration('90m')", json!("1h30m")), Ok(json!(true)));
        assert_eq!(run("duration(self) > duration('1s')", json!("1001ms")), Ok(json!(true)));
        assert_eq!(run("duration(self) < duration('0')", json!("-1us")), Ok(json!(true)));
        // Go refuses a missing unit, a lone point, unknown units and more than ~292 years.
        for bad in ["10", ".h", "1d", "", "-", "2562048h", "1h 5m"] {
            let error = run(at_most, json!(bad)).unwrap_err();
            assert!(error.contains("invalid duration"), "{bad:?}: {error}");
        }
        assert_eq!(parse_go_duration("2562047h"), Some(2_562_047 * 3_600_000_000_000));
        assert_eq!(parse_go_duration(".5s"), Some(500_000_000));
        assert_eq!(parse_go_duration("1.0000000001s"), Some(1_000_000_000));
        assert!(run("duration(self) < 5", json!("1s")).is_err());
    }
}
