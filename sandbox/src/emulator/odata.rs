//! A small OData v4 `$filter` parser and evaluator over JSON rows.
//!
//! Supported: `eq ne lt le gt ge`, `and`, `or`, `not`, parentheses, `startswith`, `endswith`,
//! `contains`, `any` on string collections (`machineTags/any(t: t eq 'x')`), string literals with
//! `''` escaping, unquoted DateTimeOffset / Date literals (also `2018-08-01Z`, as Defender's own
//! samples write them), numbers, `true`/`false`/`null`. Property names match case-insensitively
//! (Defender's docs spell them both ways, e.g. `InvestigationId`, `ComputerDnsName`). String and
//! enum equality is case-insensitive (SQL collation). As in ASP.NET OData, a DateTimeOffset
//! property compared with a quoted string is an error, and so is comparing a collection.

use std::cmp::Ordering;

use jiff::Timestamp;
use serde_json::Value;

/// The type of a filterable property.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Str,
    Enum(&'static [&'static str]),
    DateTime,
    Bool,
    Number,
    /// A collection of strings (e.g. `machineTags`): only `any` applies.
    StrList,
}

impl Kind {
    fn edm(self) -> &'static str {
        match self {
            Kind::Str => "Edm.String",
            Kind::Enum(_) => "Enum",
            Kind::DateTime => "Edm.DateTimeOffset",
            Kind::Bool => "Edm.Boolean",
            Kind::Number => "Edm.Int64",
            Kind::StrList => "Collection(Edm.String)",
        }
    }
}

/// Filterable properties of one entity set.
pub(crate) struct Schema {
    pub entity: &'static str,
    pub fields: &'static [(&'static str, Kind)],
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Lit {
    Str(String),
    Time(Timestamp),
    Num(f64),
    Bool(bool),
    Null,
}

impl Lit {
    fn edm(&self) -> &'static str {
        match self {
            Lit::Str(_) => "Edm.String",
            Lit::Time(_) => "Edm.DateTimeOffset",
            Lit::Num(_) => "Edm.Int64",
            Lit::Bool(_) => "Edm.Boolean",
            Lit::Null => "null",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Op {
    fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "eq" => Op::Eq,
            "ne" => Op::Ne,
            "lt" => Op::Lt,
            "le" => Op::Le,
            "gt" => Op::Gt,
            "ge" => Op::Ge,
            _ => return None,
        })
    }
    fn flip(self) -> Op {
        match self {
            Op::Lt => Op::Gt,
            Op::Le => Op::Ge,
            Op::Gt => Op::Lt,
            Op::Ge => Op::Le,
            o => o,
        }
    }
    fn kind_name(self) -> &'static str {
        match self {
            Op::Eq => "Equal",
            Op::Ne => "NotEqual",
            Op::Lt => "LessThan",
            Op::Le => "LessThanOrEqual",
            Op::Gt => "GreaterThan",
            Op::Ge => "GreaterThanOrEqual",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Func {
    StartsWith,
    EndsWith,
    Contains,
}

/// A parsed `$filter` expression.
#[derive(Clone, Debug)]
pub(crate) enum Filter {
    And(Box<Filter>, Box<Filter>),
    Or(Box<Filter>, Box<Filter>),
    Not(Box<Filter>),
    Cmp {
        field: &'static str,
        kind: Kind,
        op: Op,
        lit: Lit,
    },
    Func {
        func: Func,
        field: &'static str,
        arg: String,
    },
    /// `field/any(x: body)`: some element satisfies `body`, where the element is [`LAMBDA_ITEM`].
    Any {
        field: &'static str,
        body: Option<Box<Filter>>,
    },
}

/// The pseudo-property a lambda variable stands for while its body is evaluated.
const LAMBDA_ITEM: &str = "$it";

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    LParen,
    RParen,
    Comma,
    Colon,
    Str(String),
    Word(String),
}

fn lex(s: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '(' => {
                chars.next();
                out.push(Tok::LParen);
            }
            ')' => {
                chars.next();
                out.push(Tok::RParen);
            }
            ',' => {
                chars.next();
                out.push(Tok::Comma);
            }
            ':' => {
                chars.next();
                out.push(Tok::Colon);
            }
            '\'' => {
                chars.next();
                let mut lit = String::new();
                loop {
                    match chars.next() {
                        None => return Err("Unterminated string literal in $filter.".into()),
                        Some('\'') if chars.peek() == Some(&'\'') => {
                            chars.next();
                            lit.push('\'');
                        }
                        Some('\'') => break,
                        Some(ch) => lit.push(ch),
                    }
                }
                out.push(Tok::Str(lit));
            }
            _ => {
                let mut w = String::new();
                while let Some(&ch) = chars.peek() {
                    // A ':' ends a lambda variable (`t:`) but belongs to a time literal (`10:00`).
                    let lambda_colon = ch == ':' && w.starts_with(|c: char| c.is_alphabetic());
                    if ch.is_whitespace() || matches!(ch, '(' | ')' | ',' | '\'') || lambda_colon {
                        break;
                    }
                    w.push(ch);
                    chars.next();
                }
                out.push(Tok::Word(w));
            }
        }
    }
    Ok(out)
}

struct Parser<'a> {
    toks: Vec<Tok>,
    pos: usize,
    schema: &'a Schema,
    /// Inside `any(x: ...)`: the variable name.
    lambda: Option<String>,
}

pub(crate) fn parse_time(w: &str) -> Option<Timestamp> {
    if let Ok(t) = w.parse::<Timestamp>() {
        return Some(t);
    }
    if let Ok(d) = w.strip_suffix('Z').unwrap_or(w).parse::<jiff::civil::Date>() {
        return d.to_zoned(jiff::tz::TimeZone::UTC).ok().map(|z| z.timestamp());
    }
    None
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }
    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }
    fn peek_word(&self, w: &str) -> bool {
        matches!(self.peek(), Some(Tok::Word(x)) if x == w)
    }
    fn expect(&mut self, t: Tok) -> Result<(), String> {
        match self.next() {
            Some(x) if x == t => Ok(()),
            other => Err(format!("Syntax error: expected {t:?} but found {other:?} in $filter.")),
        }
    }

    fn or(&mut self) -> Result<Filter, String> {
        let mut left = self.and()?;
        while self.peek_word("or") {
            self.pos += 1;
            left = Filter::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }
    fn and(&mut self) -> Result<Filter, String> {
        let mut left = self.unary()?;
        while self.peek_word("and") {
            self.pos += 1;
            left = Filter::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }
    fn unary(&mut self) -> Result<Filter, String> {
        if self.peek_word("not") {
            self.pos += 1;
            return Ok(Filter::Not(Box::new(self.unary()?)));
        }
        self.primary()
    }
    fn field(&self, name: &str) -> Result<(&'static str, Kind), String> {
        if self.lambda.as_deref() == Some(name) {
            return Ok((LAMBDA_ITEM, Kind::Str));
        }
        self.schema
            .fields
            .iter()
            .find(|(f, _)| f.eq_ignore_ascii_case(name))
            .map(|(f, k)| (*f, *k))
            .ok_or_else(|| format!("Could not find a property named '{name}' on type '{}'.", self.schema.entity))
    }
    fn primary(&mut self) -> Result<Filter, String> {
        if self.peek() == Some(&Tok::LParen) {
            self.pos += 1;
            let f = self.or()?;
            self.expect(Tok::RParen)?;
            return Ok(f);
        }
        // Function call?
        if let (Some(Tok::Word(w)), Some(Tok::LParen)) = (self.toks.get(self.pos).cloned(), self.toks.get(self.pos + 1))
        {
            if let Some((name, "any")) = w.split_once('/') {
                self.pos += 2;
                return self.any(name);
            }
            let func = match w.as_str() {
                "startswith" => Func::StartsWith,
                "endswith" => Func::EndsWith,
                "contains" => Func::Contains,
                other => return Err(format!("An unknown function with name '{other}' was found.")),
            };
            self.pos += 2;
            let Some(Tok::Word(name)) = self.next() else {
                return Err("Syntax error: expected a property name as the first function argument.".into());
            };
            let (field, kind) = self.field(&name)?;
            if !matches!(kind, Kind::Str | Kind::Enum(_)) {
                return Err(format!("No function signature for the function with name '{w}' matches the arguments."));
            }
            self.expect(Tok::Comma)?;
            let Some(Tok::Str(arg)) = self.next() else {
                return Err("Syntax error: expected a string literal as the second function argument.".into());
            };
            self.expect(Tok::RParen)?;
            // `startswith(x,'a') eq true` is also valid OData.
            if let Some(Tok::Word(op)) = self.peek()
                && let Some(op) = Op::parse(op)
            {
                self.pos += 1;
                let b = match self.next() {
                    Some(Tok::Word(w)) if w == "true" => true,
                    Some(Tok::Word(w)) if w == "false" => false,
                    _ => return Err("Syntax error: a function result can only be compared with true or false.".into()),
                };
                let f = Filter::Func { func, field, arg };
                return Ok(match (op, b) {
                    (Op::Eq, true) | (Op::Ne, false) => f,
                    (Op::Eq, false) | (Op::Ne, true) => Filter::Not(Box::new(f)),
                    _ => return Err("A binary operator with incompatible types was detected.".into()),
                });
            }
            return Ok(Filter::Func { func, field, arg });
        }
        let left = self.operand()?;
        let op = match self.next() {
            Some(Tok::Word(w)) => {
                Op::parse(&w).ok_or_else(|| format!("Syntax error at '{w}': expected an operator."))?
            }
            other => return Err(format!("Syntax error: expected an operator but found {other:?}.")),
        };
        let right = self.operand()?;
        let (field, kind, op, lit) = match (left, right) {
            (Operand::Field(f, k), Operand::Lit(l)) => (f, k, op, l),
            (Operand::Lit(l), Operand::Field(f, k)) => (f, k, op.flip(), l),
            _ => return Err("Only comparisons between a property and a literal are supported.".into()),
        };
        let compatible = match (kind, &lit) {
            (_, Lit::Null) => true,
            (Kind::Str, Lit::Str(_)) => true,
            (Kind::Enum(values), Lit::Str(s)) => {
                if !values.iter().any(|v| v.eq_ignore_ascii_case(s)) {
                    return Err(format!("The string '{s}' is not a valid enumeration type constant."));
                }
                true
            }
            (Kind::DateTime, Lit::Time(_)) => true,
            (Kind::Bool, Lit::Bool(_)) => matches!(op, Op::Eq | Op::Ne),
            (Kind::Number, Lit::Num(_)) => true,
            _ => false,
        };
        if !compatible {
            return Err(format!(
                "A binary operator with incompatible types was detected. Found operand types '{}' and '{}' for operator kind '{}'.",
                kind.edm(),
                lit.edm(),
                op.kind_name()
            ));
        }
        Ok(Filter::Cmp { field, kind, op, lit })
    }
    /// After `field/any(`: an empty `any()` or `x: <expression over x>`, then `)`.
    fn any(&mut self, name: &str) -> Result<Filter, String> {
        let (field, kind) = self.field(name)?;
        if kind != Kind::StrList || self.lambda.is_some() {
            return Err(format!("The 'any' operator cannot be applied to '{name}'."));
        }
        if self.peek() == Some(&Tok::RParen) {
            self.pos += 1;
            return Ok(Filter::Any { field, body: None });
        }
        let Some(Tok::Word(var)) = self.next() else {
            return Err("Syntax error: expected a range variable in 'any'.".into());
        };
        self.expect(Tok::Colon)?;
        self.lambda = Some(var);
        let body = self.or();
        self.lambda = None;
        let body = body?;
        self.expect(Tok::RParen)?;
        Ok(Filter::Any { field, body: Some(Box::new(body)) })
    }
    fn operand(&mut self) -> Result<Operand, String> {
        match self.next() {
            Some(Tok::Str(s)) => Ok(Operand::Lit(Lit::Str(s))),
            Some(Tok::Word(w)) => match w.as_str() {
                "true" => Ok(Operand::Lit(Lit::Bool(true))),
                "false" => Ok(Operand::Lit(Lit::Bool(false))),
                "null" => Ok(Operand::Lit(Lit::Null)),
                _ if w.starts_with(|c: char| c.is_ascii_digit() || c == '-') => {
                    if let Some(t) = parse_time(&w) {
                        Ok(Operand::Lit(Lit::Time(t)))
                    } else if let Ok(n) = w.parse::<f64>() {
                        Ok(Operand::Lit(Lit::Num(n)))
                    } else {
                        Err(format!("Syntax error: '{w}' is not a valid literal."))
                    }
                }
                _ => {
                    let (f, k) = self.field(&w)?;
                    Ok(Operand::Field(f, k))
                }
            },
            other => Err(format!("Syntax error: expected a property or a literal but found {other:?}.")),
        }
    }
}

enum Operand {
    Field(&'static str, Kind),
    Lit(Lit),
}

/// Parses a `$filter` value (already percent-decoded). The error is the ODataError message.
pub(crate) fn parse(filter: &str, schema: &Schema) -> Result<Filter, String> {
    let toks = lex(filter)?;
    if toks.is_empty() {
        return Err("The $filter expression is empty.".into());
    }
    let mut p = Parser { toks, pos: 0, schema, lambda: None };
    let f = p.or()?;
    if p.pos < p.toks.len() {
        return Err(format!("Syntax error at position {} in '{filter}'.", p.pos));
    }
    Ok(f)
}

fn cmp_ord(op: Op, o: Ordering) -> bool {
    match op {
        Op::Eq => o == Ordering::Equal,
        Op::Ne => o != Ordering::Equal,
        Op::Lt => o == Ordering::Less,
        Op::Le => o != Ordering::Greater,
        Op::Gt => o == Ordering::Greater,
        Op::Ge => o != Ordering::Less,
    }
}

impl Filter {
    pub(crate) fn matches(&self, row: &Value) -> bool {
        match self {
            Filter::And(a, b) => a.matches(row) && b.matches(row),
            Filter::Or(a, b) => a.matches(row) || b.matches(row),
            Filter::Not(a) => !a.matches(row),
            Filter::Any { field, body } => {
                let items = row.get(*field).and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
                match body {
                    None => !items.is_empty(),
                    Some(b) => items.iter().any(|item| {
                        let mut it = serde_json::Map::new();
                        it.insert(LAMBDA_ITEM.into(), item.clone());
                        b.matches(&Value::Object(it))
                    }),
                }
            }
            Filter::Func { func, field, arg } => {
                let Some(v) = row.get(*field).and_then(Value::as_str) else { return false };
                let (v, arg) = (v.to_lowercase(), arg.to_lowercase());
                match func {
                    Func::StartsWith => v.starts_with(&arg),
                    Func::EndsWith => v.ends_with(&arg),
                    Func::Contains => v.contains(&arg),
                }
            }
            Filter::Cmp { field, kind, op, lit } => {
                let v = row.get(*field).unwrap_or(&Value::Null);
                if v.is_null() || *lit == Lit::Null {
                    let both = v.is_null() && *lit == Lit::Null;
                    return match op {
                        Op::Eq => both,
                        Op::Ne => !both,
                        _ => false,
                    };
                }
                let ord = match (kind, lit) {
                    (Kind::Str | Kind::Enum(_), Lit::Str(s)) => {
                        let Some(v) = v.as_str() else { return false };
                        v.to_lowercase().cmp(&s.to_lowercase())
                    }
                    (Kind::DateTime, Lit::Time(t)) => {
                        let Some(v) = v.as_str().and_then(|s| s.parse::<Timestamp>().ok()) else { return false };
                        v.cmp(t)
                    }
                    (Kind::Bool, Lit::Bool(b)) => {
                        let Some(v) = v.as_bool() else { return false };
                        v.cmp(b)
                    }
                    (Kind::Number, Lit::Num(n)) => {
                        let Some(v) = v.as_f64().or_else(|| v.as_str().and_then(|s| s.parse().ok())) else {
                            return false;
                        };
                        v.partial_cmp(n).unwrap_or(Ordering::Less)
                    }
                    _ => return false,
                };
                cmp_ord(*op, ord)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SCHEMA: Schema = Schema {
        entity: "Indicator",
        fields: &[
            ("indicatorValue", Kind::Str),
            ("title", Kind::Str),
            ("action", Kind::Enum(&["Block", "Audit"])),
            ("expirationTime", Kind::DateTime),
            ("generateAlert", Kind::Bool),
        ],
    };

    fn m(f: &str, row: &Value) -> bool {
        parse(f, &SCHEMA).unwrap().matches(row)
    }

    #[test]
    fn evaluates_the_documented_forms() {
        let row = json!({"indicatorValue": "AbC", "title": "it's", "action": "Block",
            "expirationTime": "2024-01-01T00:00:00.0000000Z", "generateAlert": true});
        assert!(m("indicatorValue eq 'abc'", &row));
        assert!(m("action eq 'Block' and title eq 'it''s'", &row));
        assert!(!m("action eq 'Audit'", &row));
        assert!(m("action eq 'Audit' or (generateAlert eq true)", &row));
        assert!(m("expirationTime le 2024-01-01T00:00:00Z", &row));
        assert!(!m("expirationTime lt 2024-01-01", &row));
        assert!(m("2025-01-01T00:00:00Z gt expirationTime", &row));
        assert!(m("not (title eq null)", &row));
        assert!(m("startswith(title,'IT')", &row));
        assert!(!m("expirationTime eq null", &json!({"expirationTime": "2024-01-01T00:00:00Z"})));
        assert!(m("expirationTime eq null", &json!({"expirationTime": null})));
        assert!(m("IndicatorValue eq 'abc' and expirationTime lt 2024-01-02Z", &row));
    }

    #[test]
    fn any_over_a_string_collection() {
        const TAGGED: Schema = Schema { entity: "Machine", fields: &[("machineTags", Kind::StrList)] };
        let row = json!({"machineTags": ["Probe Runner", "vip"]});
        let m = |f: &str, row: &Value| parse(f, &TAGGED).unwrap().matches(row);
        assert!(m("machineTags/any(t: t eq 'probe runner')", &row));
        assert!(m("machineTags/any(t:startswith(t,'VI'))", &row));
        assert!(!m("machineTags/any(x: x eq 'other')", &row));
        assert!(m("machineTags/any()", &row));
        assert!(!m("machineTags/any()", &json!({"machineTags": []})));
        for bad in ["machineTags eq 'vip'", "startswith(machineTags,'v')", "machineTags/any(t: u eq 'a')"] {
            assert!(parse(bad, &TAGGED).is_err(), "{bad}");
        }
    }

    #[test]
    fn rejects_invalid_filters() {
        for bad in [
            "",
            "foo eq 'x'",
            "title eq 'x",
            "title eq",
            "title xx 'a'",
            "expirationTime le '2024-01-01T00:00:00Z'",
            "action eq 'Nope'",
            "title eq 'a' and",
            "title eq 'a' 'b'",
            "bogus(title,'a')",
        ] {
            assert!(parse(bad, &SCHEMA).is_err(), "{bad}");
        }
    }
}
