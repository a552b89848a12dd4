//! A small reader for Consul's HCL (the HCL1 dialect) into a JSON value tree.
//!
//! Consul's agent and config-entry files are HCL1, which differs from HCL2 in ways that matter for these
//! files: a block may stand inside an object of a list (`upstreams = [{ mesh_gateway { mode = "local" } }]`),
//! and every block decodes as a *list* of objects (`service { .. }` is `"service": [{..}]`), so repeated
//! blocks accumulate. No maintained Rust crate reads that dialect, hence this one.
//!
//! Supported: `key = value`, `key { .. }`, `key "label" { .. }`, strings with escapes, heredocs
//! (`<<EOF`), numbers, booleans, lists with an optional trailing comma, objects, and `#`, `//`, `/* */`
//! comments. Errors carry the line and column and say what was expected.

use serde_json::{Map, Number, Value};
use std::fmt;

/// A syntax error, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HclError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What the reader expected there.
    pub expected: String,
    /// What it found.
    pub found: String,
}

impl fmt::Display for HclError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: expected {}, found {}",
            self.line, self.column, self.expected, self.found
        )
    }
}

impl std::error::Error for HclError {}

/// Most nested objects and lists accepted; a deeper file is refused rather than exhausting the stack.
pub const MAX_DEPTH: usize = 64;

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num(Number),
    Eq,
    LBrace,
    RBrace,
    LBracket,
    RBracket,
    Comma,
    Eof,
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Ident(s) => write!(f, "`{s}`"),
            Tok::Str(s) => write!(f, "string \"{s}\""),
            Tok::Num(n) => write!(f, "number {n}"),
            Tok::Eq => f.write_str("`=`"),
            Tok::LBrace => f.write_str("`{`"),
            Tok::RBrace => f.write_str("`}`"),
            Tok::LBracket => f.write_str("`[`"),
            Tok::RBracket => f.write_str("`]`"),
            Tok::Comma => f.write_str("`,`"),
            Tok::Eof => f.write_str("end of file"),
        }
    }
}

struct Lexer<'a> {
    src: &'a [u8],
    pos: usize,
    line: usize,
    col: usize,
}

impl<'a> Lexer<'a> {
    fn err(&self, line: usize, column: usize, expected: &str, found: &str) -> HclError {
        HclError {
            line,
            column,
            expected: expected.to_owned(),
            found: found.to_owned(),
        }
    }

    fn bump(&mut self) -> Option<u8> {
        let b = *self.src.get(self.pos)?;
        self.pos += 1;
        if b == b'\n' {
            self.line += 1;
            self.col = 1;
        } else if b & 0xc0 != 0x80 {
            // Count characters, not UTF-8 continuation bytes.
            self.col += 1;
        }
        Some(b)
    }

    fn peek(&self, off: usize) -> Option<u8> {
        self.src.get(self.pos + off).copied()
    }

    fn skip_space(&mut self) -> Result<(), HclError> {
        loop {
            match self.peek(0) {
                Some(b' ' | b'\t' | b'\r' | b'\n') => {
                    self.bump();
                }
                Some(b'#') => self.skip_line(),
                Some(b'/') if self.peek(1) == Some(b'/') => self.skip_line(),
                Some(b'/') if self.peek(1) == Some(b'*') => {
                    let (line, col) = (self.line, self.col);
                    self.bump();
                    self.bump();
                    loop {
                        match self.bump() {
                            Some(b'*') if self.peek(0) == Some(b'/') => {
                                self.bump();
                                break;
                            }
                            Some(_) => {}
                            None => {
                                return Err(self.err(
                                    line,
                                    col,
                                    "`*/` closing this comment",
                                    "end of file",
                                ))
                            }
                        }
                    }
                }
                _ => return Ok(()),
            }
        }
    }

    fn skip_line(&mut self) {
        while let Some(b) = self.peek(0) {
            if b == b'\n' {
                break;
            }
            self.bump();
        }
    }

    /// The next token and where it starts.
    fn next(&mut self) -> Result<(Tok, usize, usize), HclError> {
        self.skip_space()?;
        let (line, col) = (self.line, self.col);
        let Some(b) = self.peek(0) else {
            return Ok((Tok::Eof, line, col));
        };
        let tok = match b {
            b'=' => {
                self.bump();
                Tok::Eq
            }
            b'{' => {
                self.bump();
                Tok::LBrace
            }
            b'}' => {
                self.bump();
                Tok::RBrace
            }
            b'[' => {
                self.bump();
                Tok::LBracket
            }
            b']' => {
                self.bump();
                Tok::RBracket
            }
            b',' => {
                self.bump();
                Tok::Comma
            }
            b'"' => Tok::Str(self.string(line, col)?),
            b'<' if self.peek(1) == Some(b'<') => Tok::Str(self.heredoc(line, col)?),
            b'-' | b'0'..=b'9' => self.number(line, col)?,
            b if b.is_ascii_alphabetic() || b == b'_' => {
                let start = self.pos;
                while let Some(c) = self.peek(0) {
                    if c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.') {
                        self.bump();
                    } else {
                        break;
                    }
                }
                Tok::Ident(String::from_utf8_lossy(&self.src[start..self.pos]).into_owned())
            }
            other => {
                let shown = if other.is_ascii_graphic() {
                    format!("`{}`", other as char)
                } else {
                    format!("byte 0x{other:02x}")
                };
                return Err(self.err(line, col, "a key, a value or punctuation", &shown));
            }
        };
        Ok((tok, line, col))
    }

    fn string(&mut self, line: usize, col: usize) -> Result<String, HclError> {
        self.bump(); // opening quote
        let mut out = Vec::new();
        loop {
            match self.bump() {
                Some(b'"') => break,
                Some(b'\\') => match self.bump() {
                    Some(b'n') => out.push(b'\n'),
                    Some(b't') => out.push(b'\t'),
                    Some(b'r') => out.push(b'\r'),
                    Some(b'"') => out.push(b'"'),
                    Some(b'\\') => out.push(b'\\'),
                    Some(b'u') => {
                        let hex: Vec<u8> = (0..4).filter_map(|_| self.bump()).collect();
                        let c = std::str::from_utf8(&hex)
                            .ok()
                            .and_then(|h| u32::from_str_radix(h, 16).ok())
                            .and_then(char::from_u32)
                            .ok_or_else(|| {
                                self.err(
                                    self.line,
                                    self.col,
                                    "four hex digits after \\u",
                                    "something else",
                                )
                            })?;
                        let mut buf = [0u8; 4];
                        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    }
                    _ => {
                        return Err(self.err(
                            self.line,
                            self.col,
                            "a valid escape (\\n \\t \\r \\\" \\\\ \\uXXXX)",
                            "another character",
                        ))
                    }
                },
                Some(b'\n') | None => {
                    return Err(self.err(
                        line,
                        col,
                        "a closing `\"` on the same line",
                        "the end of the line",
                    ))
                }
                Some(b) => out.push(b),
            }
        }
        String::from_utf8(out).map_err(|_| self.err(line, col, "UTF-8 text", "invalid UTF-8"))
    }

    fn heredoc(&mut self, line: usize, col: usize) -> Result<String, HclError> {
        self.bump();
        self.bump();
        let start = self.pos;
        while self.peek(0).is_some_and(|c| c != b'\n') {
            self.bump();
        }
        let marker = String::from_utf8_lossy(&self.src[start..self.pos])
            .trim()
            .to_owned();
        if marker.is_empty() {
            return Err(self.err(line, col, "a heredoc marker after `<<`", "nothing"));
        }
        self.bump(); // newline
        let mut lines = Vec::new();
        loop {
            let start = self.pos;
            while self.peek(0).is_some_and(|c| c != b'\n') {
                self.bump();
            }
            let text = String::from_utf8_lossy(&self.src[start..self.pos]).into_owned();
            let at_end = self.bump().is_none();
            if text.trim() == marker {
                break;
            }
            lines.push(text);
            if at_end {
                return Err(self.err(
                    line,
                    col,
                    &format!("heredoc end marker `{marker}`"),
                    "end of file",
                ));
            }
        }
        let mut s = lines.join("\n");
        s.push('\n');
        Ok(s)
    }

    fn number(&mut self, line: usize, col: usize) -> Result<Tok, HclError> {
        let start = self.pos;
        while let Some(c) = self.peek(0) {
            if c.is_ascii_digit() || matches!(c, b'-' | b'+' | b'.' | b'e' | b'E') {
                self.bump();
            } else {
                break;
            }
        }
        let text = String::from_utf8_lossy(&self.src[start..self.pos]).into_owned();
        let num = text
            .parse::<i64>()
            .ok()
            .map(Number::from)
            .or_else(|| text.parse::<f64>().ok().and_then(Number::from_f64));
        num.map(Tok::Num)
            .ok_or_else(|| self.err(line, col, "a number", &format!("`{text}`")))
    }
}

struct Parser<'a> {
    lex: Lexer<'a>,
    tok: Tok,
    line: usize,
    col: usize,
    depth: usize,
}

impl<'a> Parser<'a> {
    fn advance(&mut self) -> Result<(), HclError> {
        let (t, l, c) = self.lex.next()?;
        self.tok = t;
        self.line = l;
        self.col = c;
        Ok(())
    }

    fn error(&self, expected: &str) -> HclError {
        HclError {
            line: self.line,
            column: self.col,
            expected: expected.to_owned(),
            found: self.tok.to_string(),
        }
    }

    fn enter(&mut self) -> Result<(), HclError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error(&format!("at most {MAX_DEPTH} levels of nesting")));
        }
        Ok(())
    }

    /// Items until `}` (when `nested`) or end of file.
    fn body(&mut self, nested: bool) -> Result<Map<String, Value>, HclError> {
        let mut map = Map::new();
        loop {
            match &self.tok {
                Tok::Comma => {
                    self.advance()?;
                    continue;
                }
                Tok::RBrace if nested => return Ok(map),
                Tok::Eof if !nested => return Ok(map),
                Tok::Eof => return Err(self.error("`}` closing the block")),
                Tok::Ident(k) | Tok::Str(k) => {
                    let key = k.clone();
                    self.advance()?;
                    self.item(&mut map, key)?;
                }
                _ => return Err(self.error(if nested { "a key or `}`" } else { "a key" })),
            }
        }
    }

    /// After a key: `= value`, `{ block }`, or `"label" ... { block }`.
    fn item(&mut self, map: &mut Map<String, Value>, key: String) -> Result<(), HclError> {
        match self.tok {
            Tok::Eq => {
                self.advance()?;
                let v = self.value()?;
                // `key = {..}` decodes like a block: a list of objects.
                let v = match v {
                    Value::Object(o) => Value::Array(vec![Value::Object(o)]),
                    other => other,
                };
                insert(map, key, v, false);
                Ok(())
            }
            Tok::LBrace => {
                let obj = self.object()?;
                insert(map, key, Value::Array(vec![Value::Object(obj)]), true);
                Ok(())
            }
            Tok::Str(ref label) | Tok::Ident(ref label) => {
                // Labelled block: key "label" { .. } is key { label { .. } }.
                let label = label.clone();
                // Each label is a level of the value it builds: counted, so a long chain of labels
                // cannot recurse past the nesting limit (it overflowed the stack at ~35,000).
                self.enter()?;
                self.advance()?;
                let mut inner = Map::new();
                self.item(&mut inner, label)?;
                self.depth -= 1;
                insert(map, key, Value::Array(vec![Value::Object(inner)]), true);
                Ok(())
            }
            _ => Err(self.error("`=` or `{` after the key")),
        }
    }

    fn object(&mut self) -> Result<Map<String, Value>, HclError> {
        self.enter()?;
        self.advance()?; // `{`
        let map = self.body(true)?;
        self.advance()?; // `}`
        self.depth -= 1;
        Ok(map)
    }

    fn value(&mut self) -> Result<Value, HclError> {
        let v = match &self.tok {
            Tok::Str(s) => Value::String(s.clone()),
            Tok::Num(n) => Value::Number(n.clone()),
            Tok::Ident(i) if i == "true" => Value::Bool(true),
            Tok::Ident(i) if i == "false" => Value::Bool(false),
            Tok::LBrace => return self.object().map(Value::Object),
            Tok::LBracket => return self.list(),
            _ => return Err(self.error("a value (string, number, true/false, list or object)")),
        };
        self.advance()?;
        Ok(v)
    }

    fn list(&mut self) -> Result<Value, HclError> {
        self.enter()?;
        self.advance()?; // `[`
        let mut items = Vec::new();
        loop {
            if self.tok == Tok::RBracket {
                break;
            }
            items.push(self.value()?);
            match self.tok {
                Tok::Comma => self.advance()?,
                Tok::RBracket => break,
                _ => return Err(self.error("`,` or `]` in the list")),
            }
        }
        self.advance()?; // `]`
        self.depth -= 1;
        Ok(Value::Array(items))
    }
}

/// Adds `key` to `map`; blocks (`append`) accumulate into one list, like HCL1's decoder.
fn insert(map: &mut Map<String, Value>, key: String, v: Value, append: bool) {
    match (map.get_mut(&key), v) {
        (Some(Value::Array(existing)), Value::Array(mut more)) if append => {
            existing.append(&mut more)
        }
        (_, v) => {
            map.insert(key, v);
        }
    }
}

/// Parses HCL1 text into a JSON object.
pub fn parse(text: &str) -> Result<Value, HclError> {
    let mut p = Parser {
        lex: Lexer {
            src: text.as_bytes(),
            pos: 0,
            line: 1,
            col: 1,
        },
        tok: Tok::Eof,
        line: 1,
        col: 1,
        depth: 0,
    };
    p.advance()?;
    p.body(false).map(Value::Object)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn blocks_become_lists_and_accumulate() {
        let v = parse(
            r#"
            # comment
            Kind = "proxy-defaults"   // another
            Name = "global"
            /* block
               comment */
            MeshGateway {
              Mode = "local"
            }
            check { id = "a" }
            check { id = "b" }
            port = 8181
            ratio = 0.5
            enabled = true
            "#,
        )
        .expect("parses");
        assert_eq!(
            v,
            json!({
                "Kind": "proxy-defaults", "Name": "global",
                "MeshGateway": [{"Mode": "local"}],
                "check": [{"id": "a"}, {"id": "b"}],
                "port": 8181, "ratio": 0.5, "enabled": true
            })
        );
    }

    #[test]
    fn blocks_inside_list_objects_and_trailing_commas() {
        let v = parse(
            r#"upstreams = [
              { destination_name = "api", local_bind_port = 10000
                mesh_gateway { mode = "remote" } },
              { destination_name = "db" },
            ]
            labelled "x" { a = 1 }
            s = "q\"\u00e9\n"
            doc = <<EOF
line one
  line two
EOF
            "#,
        )
        .expect("parses");
        assert_eq!(
            v["upstreams"][0]["mesh_gateway"],
            json!([{"mode": "remote"}])
        );
        assert_eq!(v["upstreams"][1]["destination_name"], "db");
        assert_eq!(v["labelled"], json!([{"x": [{"a": 1}]}]));
        assert_eq!(v["s"], "q\"é\n");
        assert_eq!(v["doc"], "line one\n  line two\n");
    }

    #[test]
    fn errors_say_where_and_what() {
        // A list element directly inside a block (the `upstreams = [` line missing).
        let e = parse("proxy {\n  destination_service_name = \"web\"\n    {\n      destination_name = \"api\"\n    }\n  ]\n}\n")
            .expect_err("refused");
        assert_eq!((e.line, e.column), (3, 5), "{e}");
        assert_eq!(e.expected, "a key or `}`");
        // A list closed with `}`.
        let e = parse("upstreams = [\n  { destination_name = \"api\" }\n}\n").expect_err("refused");
        assert_eq!(
            (e.line, e.expected.as_str()),
            (3, "`,` or `]` in the list"),
            "{e}"
        );
        let e = parse("a = \"open").expect_err("refused");
        assert_eq!(e.line, 1);
        let e = parse("service {\n  name = \"x\"\n").expect_err("refused");
        assert!(e.expected.contains("`}`"), "{e}");
        let e = parse("a b c").expect_err("refused");
        assert!(e.expected.contains("`=` or `{`"), "{e}");
        let deep = "a = ".to_owned() + &"[".repeat(100) + &"]".repeat(100);
        assert!(parse(&deep).is_err());
        // Labels nest too: 35,000 of them overflowed the stack before they were counted.
        let labels = "service".to_owned() + &" \"x\"".repeat(35_000) + " {}";
        let e = parse(&labels).expect_err("refused");
        assert!(e.expected.contains("levels of nesting"), "{e}");
        let ok = "service".to_owned() + &" \"x\"".repeat(10) + " {}";
        assert!(parse(&ok).is_ok());
    }
}

#[cfg(test)]
mod prop {
    use proptest::prelude::*;

    proptest! {
        /// Arbitrary text never panics the reader.
        #[test]
        fn never_panics(text in "[ -~\n\t{}\\[\\]=,\"#/*<]{0,200}") {
            let _ = super::parse(&text);
        }

        /// Corrupting a seed example gives an answer or a located error, never a panic.
        #[test]
        fn corrupted_seeds_never_panic(pos in any::<prop::sample::Index>(), c in "[{}\\[\\]=,\" a\n]") {
            let seed = include_str!("../testdata/seed/per-upstream-modes.hcl");
            let at = pos.index(seed.len());
            let mut text = seed.to_owned();
            if text.is_char_boundary(at) {
                text.insert_str(at, &c);
            }
            if let Err(e) = super::parse(&text) {
                prop_assert!(e.line >= 1);
            }
        }
    }
}
