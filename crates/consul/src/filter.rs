//! The part of Consul's filter language (bexpr) that resolver subsets use, evaluated against a
//! `CheckServiceNode` (consul-live-api.md §4.3): `==`, `!=`, `in`, `not in`, `contains`, `not contains`,
//! `is empty`, `is not empty`, joined by `and`, `or`, `not` and parentheses, over `Service.*` and
//! `Node.*` selectors. Anything else (`matches`, `Checks`) is refused with a message, never guessed.

use crate::model::CheckServiceNode;
use std::collections::BTreeMap;

/// A parsed filter.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter(Expr);

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Match(Selector, Op),
}

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Equal(String),
    NotEqual(String),
    /// `value in selector` / `selector contains value`.
    Contains(String),
    NotContains(String),
    Empty,
    NotEmpty,
}

#[derive(Debug, Clone, PartialEq)]
enum Selector {
    Text(&'static str, &'static str),
    Port,
    Tags,
    Map(&'static str, &'static str, Option<String>),
}

/// A selector's value on one instance.
enum Value<'a> {
    Text(Option<&'a str>),
    List(&'a [String]),
    Map(&'a BTreeMap<String, String>),
}

impl Filter {
    /// Parses `text`, or says what it does not understand.
    pub fn parse(text: &str) -> Result<Filter, String> {
        let tokens = tokenize(text)?;
        let mut p = Parser { tokens, pos: 0 };
        let expr = p.or()?;
        match p.tokens.get(p.pos) {
            None => Ok(Filter(expr)),
            Some(t) => Err(format!("unexpected {t:?}")),
        }
    }

    /// Whether `csn` matches.
    pub fn matches(&self, csn: &CheckServiceNode) -> bool {
        eval(&self.0, csn)
    }
}

fn eval(e: &Expr, csn: &CheckServiceNode) -> bool {
    match e {
        Expr::And(a, b) => eval(a, csn) && eval(b, csn),
        Expr::Or(a, b) => eval(a, csn) || eval(b, csn),
        Expr::Not(a) => !eval(a, csn),
        Expr::Match(sel, op) => {
            let port;
            let value = match sel {
                Selector::Text(obj, field) => Value::Text(text_field(csn, obj, field)),
                Selector::Port => {
                    port = csn.service.port.to_string();
                    Value::Text(Some(&port))
                }
                Selector::Tags => Value::List(&csn.service.tags),
                Selector::Map(obj, field, key) => {
                    let map = match (*obj, *field) {
                        ("Node", "Meta") => &csn.node.meta,
                        ("Node", _) => &csn.node.tagged_addresses,
                        _ => &csn.service.meta,
                    };
                    match key {
                        Some(k) => Value::Text(map.get(k).map(String::as_str)),
                        None => Value::Map(map),
                    }
                }
            };
            apply(&value, op)
        }
    }
}

fn text_field<'a>(csn: &'a CheckServiceNode, obj: &str, field: &str) -> Option<&'a str> {
    Some(match (obj, field) {
        ("Service", "ID") => &csn.service.id,
        ("Service", "Service") => &csn.service.service,
        ("Service", "Kind") => &csn.service.kind,
        ("Service", "Address") => &csn.service.address,
        ("Node", "Node") => &csn.node.node,
        ("Node", "Address") => &csn.node.address,
        ("Node", "Datacenter") => &csn.node.datacenter,
        _ => return None,
    })
}

fn apply(value: &Value<'_>, op: &Op) -> bool {
    match (value, op) {
        (Value::Text(v), Op::Equal(x)) => *v == Some(x.as_str()),
        (Value::Text(v), Op::NotEqual(x)) => *v != Some(x.as_str()),
        (Value::Text(v), Op::Contains(x)) => v.is_some_and(|v| v.contains(x.as_str())),
        (Value::Text(v), Op::NotContains(x)) => !v.is_some_and(|v| v.contains(x.as_str())),
        (Value::Text(v), Op::Empty) => v.is_none_or(str::is_empty),
        (Value::Text(v), Op::NotEmpty) => !v.is_none_or(str::is_empty),
        (Value::List(l), Op::Contains(x)) => l.contains(x),
        (Value::List(l), Op::NotContains(x)) => !l.contains(x),
        (Value::List(l), Op::Empty) => l.is_empty(),
        (Value::List(l), Op::NotEmpty) => !l.is_empty(),
        (Value::Map(m), Op::Contains(x)) => m.contains_key(x),
        (Value::Map(m), Op::NotContains(x)) => !m.contains_key(x),
        (Value::Map(m), Op::Empty) => m.is_empty(),
        (Value::Map(m), Op::NotEmpty) => !m.is_empty(),
        // Parsing refuses == / != on lists and maps.
        _ => false,
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Open,
    Close,
    Eq,
    Ne,
    Word(String),
    Quoted(String),
}

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '(' | ')' => {
                chars.next();
                out.push(if c == '(' { Token::Open } else { Token::Close });
            }
            '=' | '!' => {
                chars.next();
                if chars.next() != Some('=') {
                    return Err(format!("expected '{c}='"));
                }
                out.push(if c == '=' { Token::Eq } else { Token::Ne });
            }
            '"' | '`' => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next() {
                        None => return Err("unterminated string".into()),
                        Some(q) if q == c => break,
                        Some('\\') if c == '"' => {
                            s.push(chars.next().ok_or("unterminated string")?)
                        }
                        Some(x) => s.push(x),
                    }
                }
                out.push(Token::Quoted(s));
            }
            _ => {
                let mut s = String::new();
                while let Some(&x) = chars.peek() {
                    if x.is_whitespace() || "()=!\"`".contains(x) {
                        break;
                    }
                    s.push(x);
                    chars.next();
                }
                out.push(Token::Word(s));
            }
        }
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn peek_word(&self, w: &str) -> bool {
        matches!(self.tokens.get(self.pos), Some(Token::Word(x)) if x == w)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn or(&mut self) -> Result<Expr, String> {
        let mut e = self.and()?;
        while self.peek_word("or") {
            self.pos += 1;
            e = Expr::Or(Box::new(e), Box::new(self.and()?));
        }
        Ok(e)
    }

    fn and(&mut self) -> Result<Expr, String> {
        let mut e = self.not()?;
        while self.peek_word("and") {
            self.pos += 1;
            e = Expr::And(Box::new(e), Box::new(self.not()?));
        }
        Ok(e)
    }

    fn not(&mut self) -> Result<Expr, String> {
        if self.peek_word("not") {
            self.pos += 1;
            return Ok(Expr::Not(Box::new(self.not()?)));
        }
        if self.tokens.get(self.pos) == Some(&Token::Open) {
            self.pos += 1;
            let e = self.or()?;
            return match self.next() {
                Some(Token::Close) => Ok(e),
                _ => Err("expected ')'".into()),
            };
        }
        self.matcher()
    }

    fn value(&mut self) -> Result<String, String> {
        match self.next() {
            Some(Token::Word(w) | Token::Quoted(w)) => Ok(w),
            other => Err(format!("expected a value, found {other:?}")),
        }
    }

    fn matcher(&mut self) -> Result<Expr, String> {
        let first = self.next().ok_or("expected a selector")?;
        // `"value" in Selector` / `"value" not in Selector`.
        if self.peek_word("in")
            || (self.peek_word("not") && self.word_at(self.pos + 1) == Some("in"))
        {
            let negated = self.peek_word("not");
            self.pos += if negated { 2 } else { 1 };
            let value = match first {
                Token::Word(w) | Token::Quoted(w) => w,
                t => return Err(format!("expected a value, found {t:?}")),
            };
            let sel = self.selector_token()?;
            let op = if negated {
                Op::NotContains(value)
            } else {
                Op::Contains(value)
            };
            return Ok(Expr::Match(sel, op));
        }
        let Token::Word(sel_text) = first else {
            return Err(format!("expected a selector, found {first:?}"));
        };
        let sel = selector(&sel_text)?;
        let op = match self.next() {
            Some(Token::Eq) => Op::Equal(self.value()?),
            Some(Token::Ne) => Op::NotEqual(self.value()?),
            Some(Token::Word(w)) if w == "contains" => Op::Contains(self.value()?),
            Some(Token::Word(w)) if w == "is" => {
                let negated = self.peek_word("not");
                if negated {
                    self.pos += 1;
                }
                match self.next() {
                    Some(Token::Word(e)) if e == "empty" => {
                        if negated {
                            Op::NotEmpty
                        } else {
                            Op::Empty
                        }
                    }
                    _ => return Err("expected 'empty' after 'is'".into()),
                }
            }
            Some(Token::Word(w)) if w == "not" => match self.next() {
                Some(Token::Word(c)) if c == "contains" => Op::NotContains(self.value()?),
                _ => return Err("expected 'contains' after 'not'".into()),
            },
            Some(Token::Word(w)) if w == "matches" => {
                return Err("'matches' (regular expressions) is not supported".into())
            }
            other => {
                return Err(format!(
                    "expected an operator after {sel_text}, found {other:?}"
                ))
            }
        };
        let scalar = matches!(
            sel,
            Selector::Text(..) | Selector::Port | Selector::Map(_, _, Some(_))
        );
        if matches!(op, Op::Equal(_) | Op::NotEqual(_)) && !scalar {
            return Err(format!(
                "{sel_text} is a collection: use in/contains/is empty"
            ));
        }
        Ok(Expr::Match(sel, op))
    }

    fn word_at(&self, i: usize) -> Option<&str> {
        match self.tokens.get(i) {
            Some(Token::Word(w)) => Some(w),
            _ => None,
        }
    }

    fn selector_token(&mut self) -> Result<Selector, String> {
        match self.next() {
            Some(Token::Word(w)) => selector(&w),
            other => Err(format!("expected a selector, found {other:?}")),
        }
    }
}

fn selector(text: &str) -> Result<Selector, String> {
    let parts: Vec<&str> = text.splitn(3, '.').collect();
    Ok(match parts.as_slice() {
        ["Service", "Port"] => Selector::Port,
        ["Service", "Tags"] => Selector::Tags,
        ["Service", "ID"] => Selector::Text("Service", "ID"),
        ["Service", "Service"] => Selector::Text("Service", "Service"),
        ["Service", "Kind"] => Selector::Text("Service", "Kind"),
        ["Service", "Address"] => Selector::Text("Service", "Address"),
        ["Node", "Node"] => Selector::Text("Node", "Node"),
        ["Node", "Address"] => Selector::Text("Node", "Address"),
        ["Node", "Datacenter"] => Selector::Text("Node", "Datacenter"),
        ["Service", "Meta"] => Selector::Map("Service", "Meta", None),
        ["Service", "Meta", k] => Selector::Map("Service", "Meta", Some(k.to_string())),
        ["Node", "Meta"] => Selector::Map("Node", "Meta", None),
        ["Node", "Meta", k] => Selector::Map("Node", "Meta", Some(k.to_string())),
        ["Node", "TaggedAddresses"] => Selector::Map("Node", "TaggedAddresses", None),
        ["Node", "TaggedAddresses", k] => {
            Selector::Map("Node", "TaggedAddresses", Some(k.to_string()))
        }
        _ => return Err(format!("selector {text:?} is not supported")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csn() -> CheckServiceNode {
        let mut c = CheckServiceNode::default();
        c.service.id = "api-1-sidecar-proxy".into();
        c.service.service = "api-sidecar-proxy".into();
        c.service.port = 21001;
        c.service.tags = vec!["v1".into(), "canary".into()];
        c.service.meta.insert("version".into(), "1".into());
        c.node.node = "node-dc1".into();
        c.node.meta.insert("rack".into(), "r1".into());
        c
    }

    fn check(filter: &str) -> bool {
        Filter::parse(filter)
            .unwrap_or_else(|e| panic!("{filter}: {e}"))
            .matches(&csn())
    }

    #[test]
    fn the_resolver_subset_forms() {
        assert!(check("Service.Meta.version == 1"));
        assert!(!check("Service.Meta.version == 2"));
        assert!(check("Service.Meta.version == \"1\""));
        assert!(check("Service.Meta.version != 2"));
        assert!(!check("Service.Meta.missing == 1"));
        assert!(check("Service.Meta.missing != 1"));
        assert!(check("v1 in Service.Tags"));
        assert!(check(
            "\"canary\" in Service.Tags and Service.Port == 21001"
        ));
        assert!(check("prod not in Service.Tags"));
        assert!(check("Service.Tags contains canary"));
        assert!(check("Service.Tags not contains prod"));
        assert!(check("version in Service.Meta"));
        assert!(check("Node.Meta.rack == r1 or Node.Meta.rack == r2"));
        assert!(check("not (Service.Meta.version == 2)"));
        assert!(check(
            "Service.Meta.missing is empty and Service.Tags is not empty"
        ));
        assert!(check("Service.ID contains \"api-1\""));
        assert!(check(
            "(Service.Meta.version == 2 or Service.Meta.version == 1) and Node.Node == node-dc1"
        ));
    }

    #[test]
    fn what_is_not_understood_is_refused() {
        for bad in [
            "Service.Meta.version",
            "Service.Meta.version = 1",
            "Service.Tags == v1",
            "Checks.Status == passing",
            "Service.Meta.version matches \"1.*\"",
            "(Service.Meta.version == 1",
            "Service.Meta.version == 1 extra",
            "\"unterminated",
        ] {
            assert!(Filter::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
