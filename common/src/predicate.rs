//! `offloadPredicate`: which rows of a window move, in the Gluent Offload
//! Engine's predicate grammar.
//!
//! ```text
//! predicate  := or
//! or         := and ( "or" and )*
//! and        := unary ( "and" unary )*
//! unary      := "not" unary | "(" predicate ")" | test
//! test       := column ( op value
//!                      | [ "not" ] "in" "(" value ( "," value )* ")"
//!                      | "is" [ "not" ] "null" )
//! column     := "column" "(" name ")"
//! value      := "string" "(" "\"" text "\"" ")"      -- \" and \\ escape
//!             | "numeric" "(" number ")"             -- 12, -3.5, 1e6
//!             | "datetime" "(" date [ time ] ")"     -- 2024-05-01, 2024-05-01 12:30:00[.123], UTC
//! op         := "=" | "!=" | "<" | "<=" | ">" | ">="
//! ```
//!
//! Keywords are case-insensitive; column names are as in the schema. Types
//! are checked against the schema when the table is added: `string(..)`
//! against STRING columns, `numeric(..)` against INT, LONG, FLOAT and DOUBLE
//! columns, `datetime(..)` against TIMESTAMP columns and date-time columns
//! with an epoch format (compared in epoch ms). Evaluation follows SQL: a
//! comparison with NULL is unknown, and a row moves only when the predicate
//! is true.

use arrow::array::{Array, ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, Scalar, StringArray};
use arrow::compute::kernels::cmp;
use arrow::compute::{and_kleene, cast, filter_record_batch, not, or_kleene};
use arrow::datatypes::DataType as ArrowType;

use crate::schema::{DataType, Schema, TimeFormat};

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    /// `=`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

/// A typed literal.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    /// `string("..")`.
    String(String),
    /// `numeric(..)` without a fraction or exponent, within i64.
    Int(i64),
    /// Any other `numeric(..)`.
    Float(f64),
    /// `datetime(..)`, UTC epoch ms.
    DateTimeMs(i64),
}

/// A parsed, type-checked predicate.
#[derive(Debug, Clone, PartialEq)]
pub enum Predicate {
    /// Both.
    And(Box<Predicate>, Box<Predicate>),
    /// Either.
    Or(Box<Predicate>, Box<Predicate>),
    /// Negation.
    Not(Box<Predicate>),
    /// `column(c) op value`.
    Compare {
        /// Column name.
        column: String,
        /// Operator.
        op: CmpOp,
        /// Right-hand side.
        value: Literal,
    },
    /// `column(c) [not] in (v, ...)`.
    In {
        /// Column name.
        column: String,
        /// The list.
        values: Vec<Literal>,
        /// `not in`.
        negated: bool,
    },
    /// `column(c) is [not] null`.
    IsNull {
        /// Column name.
        column: String,
        /// `is not null`.
        negated: bool,
    },
}

/// A syntax or type error, at a 1-based character position of the text.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("at position {position}: {message}")]
pub struct PredicateError {
    /// 1-based character position.
    pub position: usize,
    /// What is wrong and what was expected.
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
    Op(&'static str),
    LParen,
    RParen,
    Comma,
    /// Raw text of a `numeric(..)` / `datetime(..)` / `column(..)` argument.
    Arg(String),
}

struct Parser<'a> {
    text: &'a str,
    toks: Vec<(usize, Tok)>,
    at: usize,
    schema: &'a Schema,
    /// Current nesting of `not` and `(`.
    depth: usize,
    /// Tests parsed so far.
    tests: usize,
}

/// Longest `offloadPredicate`, characters.
pub const MAX_PREDICATE_CHARS: usize = 16 * 1024;
/// Deepest nesting of `not` and parentheses in an `offloadPredicate`.
pub const MAX_PREDICATE_DEPTH: usize = 64;
/// Most tests (`column(..) op value`) in one `offloadPredicate`: `and` and
/// `or` chains nest as deep as they are long, and evaluation recurses.
pub const MAX_PREDICATE_TESTS: usize = 256;

fn err(position: usize, message: impl Into<String>) -> PredicateError {
    PredicateError { position, message: message.into() }
}

/// Splits `text` into tokens with their 1-based character positions; the
/// argument of `column(`, `numeric(` and `datetime(` is one raw token.
fn lex(text: &str) -> Result<Vec<(usize, Tok)>, PredicateError> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let pos = |i: usize| i + 1;
    let mut out: Vec<(usize, Tok)> = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let (_, c) = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        match c {
            '(' => {
                out.push((pos(i), Tok::LParen));
                i += 1;
                // the argument of column(..), numeric(..), datetime(..) is raw text up to ')'
                let raw = matches!(out.iter().rev().nth(1), Some((_, Tok::Word(w)))
                    if ["column", "numeric", "datetime"].contains(&w.to_ascii_lowercase().as_str()));
                if raw {
                    let from = i;
                    while i < chars.len() && chars[i].1 != ')' {
                        i += 1;
                    }
                    let arg: String = chars[from..i].iter().map(|(_, c)| c).collect();
                    out.push((pos(from), Tok::Arg(arg.trim().to_string())));
                }
            }
            ')' => {
                out.push((pos(i), Tok::RParen));
                i += 1;
            }
            ',' => {
                out.push((pos(i), Tok::Comma));
                i += 1;
            }
            '"' => {
                let mut s = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err(err(pos(start), "a string that is never closed (expected '\"')")),
                        Some((_, '"')) => {
                            i += 1;
                            break;
                        }
                        Some((_, '\\')) => match chars.get(i + 1) {
                            Some((_, e @ ('"' | '\\'))) => {
                                s.push(*e);
                                i += 2;
                            }
                            _ => return Err(err(pos(i), "expected \\\" or \\\\ after a backslash")),
                        },
                        Some((_, ch)) => {
                            s.push(*ch);
                            i += 1;
                        }
                    }
                }
                out.push((pos(start), Tok::Str(s)));
            }
            '=' => {
                out.push((pos(i), Tok::Op("=")));
                i += 1;
            }
            '!' | '<' | '>' => {
                let two = chars.get(i + 1).map(|(_, c)| *c) == Some('=');
                let op = match (c, two) {
                    ('!', true) => "!=",
                    ('<', true) => "<=",
                    ('>', true) => ">=",
                    ('<', false) => "<",
                    ('>', false) => ">",
                    _ => return Err(err(pos(i), "'!' must be followed by '=' (the operator is !=)")),
                };
                out.push((pos(i), Tok::Op(op)));
                i += if two { 2 } else { 1 };
            }
            c if c.is_alphabetic() || c == '_' => {
                while i < chars.len() && (chars[i].1.is_alphanumeric() || chars[i].1 == '_') {
                    i += 1;
                }
                out.push((pos(start), Tok::Word(chars[start..i].iter().map(|(_, c)| c).collect())));
            }
            other => return Err(err(pos(i), format!("unexpected '{other}'"))),
        }
    }
    // positions as characters, not bytes
    Ok(out)
}

impl Predicate {
    /// Parses `text` and checks it against `schema`.
    ///
    /// # Errors
    /// A [`PredicateError`] with the 1-based position of the first syntax or
    /// type error and what was expected there.
    pub fn parse(text: &str, schema: &Schema) -> Result<Predicate, PredicateError> {
        let chars = text.chars().count();
        if chars > MAX_PREDICATE_CHARS {
            return Err(err(
                MAX_PREDICATE_CHARS + 1,
                format!("the predicate is {chars} characters long: expected at most {MAX_PREDICATE_CHARS}"),
            ));
        }
        let toks = lex(text)?;
        let mut p = Parser { text, toks, at: 0, schema, depth: 0, tests: 0 };
        let pred = p.or()?;
        if let Some((pos, t)) = p.toks.get(p.at) {
            return Err(err(*pos, format!("unexpected {}; expected 'and', 'or' or the end", describe(t))));
        }
        Ok(pred)
    }

    /// The rows of `batch` (columns of `schema`) for which the predicate is
    /// true: NULL (unknown) is false, as in SQL's WHERE.
    ///
    /// # Errors
    /// A column missing from the batch, or an Arrow error.
    pub fn mask(&self, batch: &RecordBatch, schema: &Schema) -> crate::Result<BooleanArray> {
        let m = self.eval(batch, schema)?;
        Ok(match m.nulls() {
            None => m,
            Some(_) => arrow::compute::prep_null_mask_filter(&m),
        })
    }

    /// `batch` without the rows the predicate does not keep, and how many
    /// it dropped.
    ///
    /// # Errors
    /// As [`Predicate::mask`].
    pub fn filter(&self, batch: &RecordBatch, schema: &Schema) -> crate::Result<(RecordBatch, u64)> {
        let mask = self.mask(batch, schema)?;
        let kept = mask.true_count();
        if kept == batch.num_rows() {
            return Ok((batch.clone(), 0));
        }
        Ok((filter_record_batch(batch, &mask)?, (batch.num_rows() - kept) as u64))
    }

    fn eval(&self, batch: &RecordBatch, schema: &Schema) -> crate::Result<BooleanArray> {
        Ok(match self {
            Predicate::And(a, b) => and_kleene(&a.eval(batch, schema)?, &b.eval(batch, schema)?)?,
            Predicate::Or(a, b) => or_kleene(&a.eval(batch, schema)?, &b.eval(batch, schema)?)?,
            Predicate::Not(a) => not(&a.eval(batch, schema)?)?,
            Predicate::IsNull { column, negated } => {
                let c = column_of(batch, column)?;
                if *negated {
                    arrow::compute::is_not_null(c.as_ref())?
                } else {
                    arrow::compute::is_null(c.as_ref())?
                }
            }
            Predicate::Compare { column, op, value } => compare(batch, schema, column, *op, value)?,
            Predicate::In { column, values, negated } => {
                let mut any: Option<BooleanArray> = None;
                for v in values {
                    let eq = compare(batch, schema, column, CmpOp::Eq, v)?;
                    any = Some(match any {
                        None => eq,
                        Some(a) => or_kleene(&a, &eq)?,
                    });
                }
                let any = any.unwrap_or_else(|| BooleanArray::from(vec![false; batch.num_rows()]));
                if *negated {
                    not(&any)?
                } else {
                    any
                }
            }
        })
    }
}

fn column_of<'b>(batch: &'b RecordBatch, name: &str) -> crate::Result<&'b ArrayRef> {
    batch.column_by_name(name).ok_or_else(|| crate::Error::Segment {
        segment: String::new(),
        problem: format!("offloadPredicate: column '{name}' is missing from the rows"),
    })
}

fn compare(
    batch: &RecordBatch,
    schema: &Schema,
    column: &str,
    op: CmpOp,
    value: &Literal,
) -> crate::Result<BooleanArray> {
    let c = column_of(batch, column)?;
    let (left, right): (ArrayRef, ArrayRef) = match value {
        Literal::String(s) => (cast(c, &ArrowType::Utf8)?, std::sync::Arc::new(StringArray::from(vec![s.as_str()]))),
        Literal::Int(n) if c.data_type().is_integer() => {
            (cast(c, &ArrowType::Int64)?, std::sync::Arc::new(Int64Array::from(vec![*n])))
        }
        Literal::Int(n) => (cast(c, &ArrowType::Float64)?, std::sync::Arc::new(Float64Array::from(vec![*n as f64]))),
        Literal::Float(f) => (cast(c, &ArrowType::Float64)?, std::sync::Arc::new(Float64Array::from(vec![*f]))),
        Literal::DateTimeMs(ms) => {
            let format = schema.field(column).and_then(|f| f.time_format).unwrap_or(TimeFormat::MILLIS);
            let t = crate::columnar::time_ms(c, format)?;
            (std::sync::Arc::new(t), std::sync::Arc::new(Int64Array::from(vec![*ms])))
        }
    };
    let r = Scalar::new(right);
    Ok(match op {
        CmpOp::Eq => cmp::eq(&left, &r)?,
        CmpOp::Ne => cmp::neq(&left, &r)?,
        CmpOp::Lt => cmp::lt(&left, &r)?,
        CmpOp::Le => cmp::lt_eq(&left, &r)?,
        CmpOp::Gt => cmp::gt(&left, &r)?,
        CmpOp::Ge => cmp::gt_eq(&left, &r)?,
    })
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Word(w) => format!("'{w}'"),
        Tok::Str(s) => format!("\"{s}\""),
        Tok::Op(o) => format!("'{o}'"),
        Tok::LParen => "'('".into(),
        Tok::RParen => "')'".into(),
        Tok::Comma => "','".into(),
        Tok::Arg(a) => format!("'{a}'"),
    }
}

impl Parser<'_> {
    fn end_pos(&self) -> usize {
        self.text.chars().count() + 1
    }

    fn peek(&self) -> Option<&(usize, Tok)> {
        self.toks.get(self.at)
    }

    fn peek_word(&self, w: &str) -> bool {
        matches!(self.peek(), Some((_, Tok::Word(x))) if x.eq_ignore_ascii_case(w))
    }

    fn next(&mut self, expected: &str) -> Result<(usize, Tok), PredicateError> {
        let t = self
            .toks
            .get(self.at)
            .cloned()
            .ok_or_else(|| err(self.end_pos(), format!("the text ends; expected {expected}")))?;
        self.at += 1;
        Ok(t)
    }

    fn expect(&mut self, want: Tok, expected: &str) -> Result<usize, PredicateError> {
        let (pos, t) = self.next(expected)?;
        if t != want {
            return Err(err(pos, format!("unexpected {}; expected {expected}", describe(&t))));
        }
        Ok(pos)
    }

    fn or(&mut self) -> Result<Predicate, PredicateError> {
        let mut left = self.and()?;
        while self.peek_word("or") {
            self.at += 1;
            left = Predicate::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Predicate, PredicateError> {
        let mut left = self.unary()?;
        while self.peek_word("and") {
            self.at += 1;
            left = Predicate::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Predicate, PredicateError> {
        let nests = self.peek_word("not") || matches!(self.peek(), Some((_, Tok::LParen)));
        if nests {
            self.depth += 1;
            if self.depth > MAX_PREDICATE_DEPTH {
                let pos = self.peek().map_or(0, |(p, _)| *p);
                return Err(err(
                    pos,
                    format!("'not' and '(' nest deeper than {MAX_PREDICATE_DEPTH} here: expected at most {MAX_PREDICATE_DEPTH}"),
                ));
            }
        }
        let out = if self.peek_word("not") {
            self.at += 1;
            Predicate::Not(Box::new(self.unary()?))
        } else if matches!(self.peek(), Some((_, Tok::LParen))) {
            self.at += 1;
            let inner = self.or()?;
            self.expect(Tok::RParen, "')'")?;
            inner
        } else {
            self.tests += 1;
            if self.tests > MAX_PREDICATE_TESTS {
                let pos = self.peek().map_or(0, |(p, _)| *p);
                return Err(err(
                    pos,
                    format!("more than {MAX_PREDICATE_TESTS} tests: expected at most {MAX_PREDICATE_TESTS}"),
                ));
            }
            self.test()?
        };
        if nests {
            self.depth -= 1;
        }
        Ok(out)
    }

    fn test(&mut self) -> Result<Predicate, PredicateError> {
        let (pos, t) = self.next("column(NAME), 'not' or '('")?;
        if !matches!(&t, Tok::Word(w) if w.eq_ignore_ascii_case("column")) {
            return Err(err(pos, format!("unexpected {}; expected column(NAME), 'not' or '('", describe(&t))));
        }
        self.expect(Tok::LParen, "'(' after column")?;
        let (npos, name) = match self.next("a column name")? {
            (p, Tok::Arg(a)) if !a.is_empty() => (p, a),
            (p, _) => return Err(err(p, "expected a column name inside column(..)")),
        };
        self.expect(Tok::RParen, "')' after the column name")?;
        let Some(field) = self.schema.field(&name) else {
            return Err(err(npos, format!("column '{name}' is not in the schema")));
        };
        let (opos, t) = self.next("an operator (= != < <= > >=), 'in', 'not in' or 'is'")?;
        match t {
            Tok::Op(o) => {
                let op = match o {
                    "=" => CmpOp::Eq,
                    "!=" => CmpOp::Ne,
                    "<" => CmpOp::Lt,
                    "<=" => CmpOp::Le,
                    ">" => CmpOp::Gt,
                    _ => CmpOp::Ge,
                };
                let value = self.value(&name, field.data_type, field.time_format.is_some())?;
                Ok(Predicate::Compare { column: name, op, value })
            }
            Tok::Word(w) if w.eq_ignore_ascii_case("is") => {
                let negated = self.peek_word("not");
                if negated {
                    self.at += 1;
                }
                match self.next("'null'")? {
                    (_, Tok::Word(n)) if n.eq_ignore_ascii_case("null") => {
                        Ok(Predicate::IsNull { column: name, negated })
                    }
                    (p, t) => Err(err(p, format!("unexpected {}; expected 'null'", describe(&t)))),
                }
            }
            Tok::Word(w) if w.eq_ignore_ascii_case("in") || w.eq_ignore_ascii_case("not") => {
                let negated = w.eq_ignore_ascii_case("not");
                if negated {
                    match self.next("'in'")? {
                        (_, Tok::Word(x)) if x.eq_ignore_ascii_case("in") => {}
                        (p, t) => return Err(err(p, format!("unexpected {}; expected 'in'", describe(&t)))),
                    }
                }
                self.expect(Tok::LParen, "'(' to open the list")?;
                let mut values = vec![self.value(&name, field.data_type, field.time_format.is_some())?];
                loop {
                    match self.next("',' or ')'")? {
                        (_, Tok::Comma) => {
                            values.push(self.value(&name, field.data_type, field.time_format.is_some())?)
                        }
                        (_, Tok::RParen) => break,
                        (p, t) => return Err(err(p, format!("unexpected {}; expected ',' or ')'", describe(&t)))),
                    }
                }
                Ok(Predicate::In { column: name, values, negated })
            }
            other => Err(err(
                opos,
                format!(
                    "unexpected {}; expected an operator (= != < <= > >=), 'in', 'not in' or 'is'",
                    describe(&other)
                ),
            )),
        }
    }

    /// A literal compared with `column` (of type `ty`; `dated`: it has a time format).
    fn value(&mut self, column: &str, ty: DataType, dated: bool) -> Result<Literal, PredicateError> {
        let (pos, t) = self.next("string(..), numeric(..) or datetime(..)")?;
        let kind = match &t {
            Tok::Word(w) => w.to_ascii_lowercase(),
            other => {
                return Err(err(
                    pos,
                    format!("unexpected {}; expected string(..), numeric(..) or datetime(..)", describe(other)),
                ))
            }
        };
        self.expect(Tok::LParen, &format!("'(' after {kind}"))?;
        let (apos, arg) = self.next("a value")?;
        let lit = match (kind.as_str(), arg) {
            ("string", Tok::Str(s)) => Literal::String(s),
            ("string", _) => return Err(err(apos, "expected a double-quoted string inside string(..)")),
            ("numeric", Tok::Arg(a)) => parse_number(&a).ok_or_else(|| err(apos, format!("'{a}' is not a number")))?,
            ("datetime", Tok::Arg(a)) => Literal::DateTimeMs(parse_datetime(&a).ok_or_else(|| {
                err(apos, format!("'{a}' is not a date-time (expected 2024-05-01 or 2024-05-01 12:30:00, UTC)"))
            })?),
            (k @ ("numeric" | "datetime"), _) => return Err(err(apos, format!("expected a value inside {k}(..)"))),
            (k, _) => return Err(err(pos, format!("unknown value kind '{k}'; expected string, numeric or datetime"))),
        };
        self.expect(Tok::RParen, "')' after the value")?;
        let numeric = matches!(ty, DataType::Int | DataType::Long | DataType::Float | DataType::Double);
        let ok = match &lit {
            Literal::String(_) => ty == DataType::String,
            Literal::Int(_) | Literal::Float(_) => numeric,
            Literal::DateTimeMs(_) => ty == DataType::Timestamp || (dated && numeric),
        };
        if !ok {
            let kind_name = match lit {
                Literal::String(_) => "a string",
                Literal::Int(_) | Literal::Float(_) => "a number",
                Literal::DateTimeMs(_) => "a date-time",
            };
            return Err(err(pos, format!("column '{column}' is {ty:?}, not comparable with {kind_name}")));
        }
        Ok(lit)
    }
}

fn parse_number(text: &str) -> Option<Literal> {
    if let Ok(n) = text.parse::<i64>() {
        return Some(Literal::Int(n));
    }
    let f: f64 = text.parse().ok()?;
    f.is_finite().then_some(Literal::Float(f))
}

/// `2024-05-01`, `2024-05-01 12:30:00`, `2024-05-01T12:30:00.250`: UTC epoch ms.
fn parse_datetime(text: &str) -> Option<i64> {
    let t = text.trim().replace(' ', "T");
    let dt: jiff::civil::DateTime =
        if t.contains('T') { t.parse().ok()? } else { t.parse::<jiff::civil::Date>().ok()?.into() };
    Some(dt.to_zoned(jiff::tz::TimeZone::UTC).ok()?.timestamp().as_millisecond())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, Int32Array};
    use std::sync::Arc;

    fn schema() -> Schema {
        Schema::from_json(&serde_json::json!({"schemaName": "s",
            "dimensionFieldSpecs": [{"name": "k", "dataType": "STRING"}, {"name": "p", "dataType": "INT"}],
            "metricFieldSpecs": [{"name": "x", "dataType": "DOUBLE"}],
            "dateTimeFieldSpecs": [{"name": "ts", "dataType": "LONG", "format": "1:SECONDS:EPOCH", "granularity": "1:SECONDS"}]}))
        .unwrap()
    }

    fn batch() -> RecordBatch {
        RecordBatch::try_from_iter(vec![
            ("k", Arc::new(StringArray::from(vec![Some("a"), Some("b"), None, Some("c")])) as ArrayRef),
            ("p", Arc::new(Int32Array::from(vec![Some(1), Some(2), Some(3), None])) as ArrayRef),
            ("x", Arc::new(Float64Array::from(vec![0.5, 1.5, 2.5, 3.5])) as ArrayRef),
            // 2024-05-01T00:00:00Z and one hour steps, in seconds
            (
                "ts",
                Arc::new(Int64Array::from(vec![1_714_521_600, 1_714_525_200, 1_714_528_800, 1_714_532_400]))
                    as ArrayRef,
            ),
        ])
        .unwrap()
    }

    fn kept(text: &str) -> Vec<usize> {
        let p = Predicate::parse(text, &schema()).unwrap_or_else(|e| panic!("{text}: {e}"));
        let m = p.mask(&batch(), &schema()).unwrap();
        (0..m.len()).filter(|i| m.value(*i)).collect()
    }

    #[test]
    fn predicates_keep_the_rows_they_are_true_for() {
        assert_eq!(kept(r#"column(k) = string("a")"#), vec![0]);
        assert_eq!(kept(r#"column(k) != string("a")"#), vec![1, 3], "NULL is unknown, not kept");
        assert_eq!(kept(r#"column(k) in (string("a"), string("c"))"#), vec![0, 3]);
        assert_eq!(kept(r#"column(k) not in (string("a"), string("c"))"#), vec![1]);
        assert_eq!(kept("column(k) is null"), vec![2]);
        assert_eq!(kept("COLUMN(p) IS NOT NULL and column(p) >= numeric(2)"), vec![1, 2]);
        assert_eq!(kept("column(x) < numeric(2) or column(p) = numeric(3)"), vec![0, 1, 2]);
        assert_eq!(kept("not (column(x) > numeric(1.5))"), vec![0, 1]);
        assert_eq!(kept("column(x) <= numeric(1.5e0)"), vec![0, 1]);
        assert_eq!(kept("column(ts) >= datetime(2024-05-01 02:00:00)"), vec![2, 3]);
        assert_eq!(kept("column(ts) < datetime(2024-05-01T01:00:00)"), vec![0]);
        assert_eq!(kept("column(ts) = datetime(2024-05-01)"), vec![0]);
        assert_eq!(
            kept(r#"column(p) = numeric(1) and column(k) = string("a") or column(p) = numeric(2)"#),
            vec![0, 1],
            "and binds tighter than or"
        );
        let p = Predicate::parse(r#"column(k) = string("a \"q\" \\")"#, &schema()).unwrap();
        assert_eq!(
            p,
            Predicate::Compare { column: "k".into(), op: CmpOp::Eq, value: Literal::String(r#"a "q" \"#.into()) }
        );
        let (b, dropped) =
            Predicate::parse("column(p) > numeric(1)", &schema()).unwrap().filter(&batch(), &schema()).unwrap();
        assert_eq!((b.num_rows(), dropped), (2, 2));
    }

    #[test]
    fn errors_name_their_position() {
        let e = |text: &str| Predicate::parse(text, &schema()).unwrap_err();
        assert_eq!(e("column(nope) = numeric(1)").position, 8);
        assert!(e("column(nope) = numeric(1)").message.contains("not in the schema"));
        let t = e(r#"column(p) = string("a")"#);
        assert_eq!(t.position, 13);
        assert!(t.message.contains("not comparable with a string"), "{}", t.message);
        assert_eq!(e("column(k) = numeric(1)").position, 13);
        assert_eq!(e("column(x) = datetime(2024-01-01)").position, 13, "x has no time format");
        assert_eq!(e("column(p) = numeric(abc)").position, 21);
        assert_eq!(e("column(p) == numeric(1)").position, 12);
        assert_eq!(e("column(p) = numeric(1) and").message, "the text ends; expected column(NAME), 'not' or '('");
        assert_eq!(e("column(p) = numeric(1) and").position, 27);
        assert_eq!(e("(column(p) = numeric(1)").position, 24);
        assert_eq!(e(r#"column(k) = string("open"#).position, 20);
        assert_eq!(e("column(p) like numeric(1)").position, 11);
        assert_eq!(e("column(p) = numeric(1) column(p)").position, 24);
        assert_eq!(e("column(ts) > datetime(yesterday)").position, 23);
        assert_eq!(e("column(p) in (numeric(1); numeric(2))").position, 25);
    }

    #[test]
    fn predicates_are_bounded_in_length_depth_and_tests() {
        let e = |text: &str| Predicate::parse(text, &schema()).unwrap_err();
        // 100,000 nested 'not' and '(' are refused by the length limit, before any recursion
        let deep = format!("{}column(p) = numeric(1){}", "(".repeat(100_000), ")".repeat(100_000));
        assert!(e(&deep).message.contains("at most 16384"), "{}", e(&deep).message);
        let nots = format!("{}column(p) = numeric(1)", "not ".repeat(100_000));
        assert!(e(&nots).message.contains("characters long"));
        // within the length limit: the depth limit names itself and where
        let deep = format!("{}column(p) = numeric(1){}", "(".repeat(65), ")".repeat(65));
        let d = e(&deep);
        assert!(d.message.contains("nest deeper than 64"), "{}", d.message);
        assert_eq!(d.position, 65);
        let ok = format!("{}column(p) = numeric(1){}", "(".repeat(64), ")".repeat(64));
        Predicate::parse(&ok, &schema()).unwrap();
        let ok = format!("{}column(p) = numeric(1)", "not ".repeat(64));
        Predicate::parse(&ok, &schema()).unwrap();
        let chain = vec!["column(p) = numeric(1)"; 257].join(" or ");
        assert!(e(&chain).message.contains("more than 256 tests"));
        let chain = vec!["column(p) = numeric(1)"; 256].join(" or ");
        Predicate::parse(&chain, &schema()).unwrap();
    }
}
