//! Postgres text output -> JSON values (SPEC §4 value table).
//!
//! The capture session pins `DateStyle=ISO`, `IntervalStyle=iso_8601`,
//! `TimeZone=UTC`, `extra_float_digits=1` and `bytea_output=hex`, so the text
//! arriving here has one known shape per type. Whatever does not have that
//! shape is passed on as the text itself (a JSON string): a value is never
//! dropped and this module never panics.

use base64::Engine as _;
use serde_json::{Number, Value};

/// How one column's text is turned into JSON. Chosen once per column from its
/// type oid (`kind_for_type`), applied to every value (`to_json`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueKind {
    /// `t` / `f` -> `true` / `false`.
    Bool,
    /// smallint, integer, bigint, oid: a JSON number with exactly the digits
    /// Postgres printed (no f64 round trip, so bigints above 2^53 stay exact).
    Int,
    /// real, double precision: the shortest round-trip token Postgres printed;
    /// `NaN`, `Infinity`, `-Infinity` as strings.
    Float,
    /// numeric: a number token with exactly Postgres' digits (`12.500000`);
    /// `NaN`, `Infinity`, `-Infinity` as strings.
    Numeric,
    /// json, jsonb: the JSON value itself, key order and number digits kept
    /// (serde_json spells an exponent `e+N`, so a `json` value typed as `1E2`
    /// arrives as `1e+2`; jsonb never prints exponents). Of duplicate keys in a
    /// `json` value only the last survives, as in every JSON parser.
    Json,
    /// bytea: standard base64 with padding.
    Bytea,
    /// timestamptz: RFC 3339 in UTC with `Z`; `infinity` stays a string.
    TimestampTz,
    /// timestamp: the same shape without `Z`.
    Timestamp,
    /// box: a string like `String`, but its arrays are delimited by `;`.
    GeoBox,
    /// Everything else (text, uuid, date, time, interval, enums, ...): the
    /// text as a JSON string.
    String,
    /// An array: a JSON array (nested for several dimensions) of the element
    /// mapping, NULL elements as `null`.
    Array(Box<ValueKind>),
}

impl ValueKind {
    fn array(element: ValueKind) -> ValueKind {
        ValueKind::Array(Box::new(element))
    }
}

/// Builtin array types whose elements map as plain strings.
const STRING_ARRAY_OIDS: &[u32] = &[
    143,  // xml[]
    271,  // xid8[]
    629,  // line[]
    651,  // cidr[]
    719,  // circle[]
    775,  // macaddr8[]
    791,  // money[]
    1002, // "char"[]
    1003, // name[]
    1006, // int2vector[]
    1008, // regproc[]
    1009, // text[]
    1010, // tid[]
    1011, // xid[]
    1012, // cid[]
    1013, // oidvector[]
    1014, // bpchar[]
    1015, // varchar[]
    1017, // point[]
    1018, // lseg[]
    1019, // path[]
    1027, // polygon[]
    1034, // aclitem[]
    1040, // macaddr[]
    1041, // inet[]
    1182, // date[]
    1183, // time[]
    1187, // interval[]
    1263, // cstring[]
    1270, // timetz[]
    1561, // bit[]
    1563, // varbit[]
    2201, // refcursor[]
    2207, // regprocedure[]
    2208, // regoper[]
    2209, // regoperator[]
    2210, // regclass[]
    2211, // regtype[]
    2287, // record[]
    2949, // txid_snapshot[]
    2951, // uuid[]
    3221, // pg_lsn[]
    3643, // tsvector[]
    3644, // gtsvector[]
    3645, // tsquery[]
    3735, // regconfig[]
    3770, // regdictionary[]
    3905, // int4range[]
    3907, // numrange[]
    3909, // tsrange[]
    3911, // tstzrange[]
    3913, // daterange[]
    3927, // int8range[]
    4073, // jsonpath[]
    4090, // regnamespace[]
    4097, // regrole[]
    4192, // regcollation[]
    5039, // pg_snapshot[]
    6150, // int4multirange[]
    6151, // nummultirange[]
    6152, // tsmultirange[]
    6153, // tstzmultirange[]
    6154, // datemultirange[]
    6155, // int8multirange[]
];

/// The mapping for a column of type `oid`. `type_name` is the name from the
/// Type message pgoutput sends for non-builtin types (user arrays are named
/// `_element`); builtin oids never need it. Unknown types map as strings, so
/// enums, domains, composites and extension types arrive as Postgres prints them.
pub fn kind_for_type(oid: u32, type_name: Option<&str>) -> ValueKind {
    use ValueKind as K;
    match oid {
        16 => K::Bool,
        20 | 21 | 23 | 26 => K::Int,
        700 | 701 => K::Float,
        1700 => K::Numeric,
        114 | 3802 => K::Json,
        17 => K::Bytea,
        1184 => K::TimestampTz,
        1114 => K::Timestamp,
        603 => K::GeoBox,
        1000 => K::array(K::Bool),
        1005 | 1007 | 1016 | 1028 => K::array(K::Int),
        1021 | 1022 => K::array(K::Float),
        1231 => K::array(K::Numeric),
        199 | 3807 => K::array(K::Json),
        1001 => K::array(K::Bytea),
        1185 => K::array(K::TimestampTz),
        1115 => K::array(K::Timestamp),
        1020 => K::array(K::GeoBox),
        _ if STRING_ARRAY_OIDS.contains(&oid) => K::array(K::String),
        _ if type_name.is_some_and(|n| n.starts_with('_')) => K::array(K::String),
        _ => K::String,
    }
}

/// The JSON for one non-NULL value printed by Postgres as `text` (SPEC §4).
/// A value that does not parse as its kind comes back as the text itself.
pub fn to_json(kind: &ValueKind, text: &str) -> Value {
    let mapped = match kind {
        ValueKind::Bool => match text {
            "t" => Some(Value::Bool(true)),
            "f" => Some(Value::Bool(false)),
            _ => None,
        },
        ValueKind::Int => is_integer_token(text).then(|| number(text)).flatten(),
        ValueKind::Float => finite_number(text),
        ValueKind::Numeric => is_number_token(text).then(|| number(text)).flatten(),
        ValueKind::Json => serde_json::from_str(text).ok(),
        ValueKind::Bytea => bytea_base64(text).map(Value::String),
        ValueKind::TimestampTz => timestamp(text, true).map(Value::String),
        ValueKind::Timestamp => timestamp(text, false).map(Value::String),
        ValueKind::GeoBox | ValueKind::String => None,
        ValueKind::Array(element) => array(element, text),
    };
    mapped.unwrap_or_else(|| Value::String(text.to_owned()))
}

/// Appends the JSON for one non-NULL value to `out`: the same text as
/// `to_json(kind, text)` serialised, without building a JSON tree for strings
/// and numbers (which hold the large values).
pub fn write_json(out: &mut Vec<u8>, kind: &ValueKind, text: &str) {
    match kind {
        ValueKind::GeoBox | ValueKind::String => write_str(out, text),
        ValueKind::Int if is_integer_token(text) => out.extend_from_slice(text.as_bytes()),
        ValueKind::Numeric if is_number_token(text) => out.extend_from_slice(text.as_bytes()),
        ValueKind::Bool if text == "t" => out.extend_from_slice(b"true"),
        ValueKind::Bool if text == "f" => out.extend_from_slice(b"false"),
        _ => {
            let value = to_json(kind, text);
            // Writing JSON into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *out, &value);
        }
    }
}

/// Appends `text` as a JSON string (quoted and escaped).
pub fn write_str(out: &mut Vec<u8>, text: &str) {
    // Writing JSON into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, text);
}

/// A JSON number that keeps exactly the token's digits (arbitrary_precision).
fn number(token: &str) -> Option<Value> {
    serde_json::from_str::<Number>(token)
        .ok()
        .map(Value::Number)
}

/// Float tokens must also be finite: `1e999` would read back as infinity.
fn finite_number(text: &str) -> Option<Value> {
    let finite = text.parse::<f64>().is_ok_and(f64::is_finite);
    (finite && is_number_token(text))
        .then(|| number(text))
        .flatten()
}

/// `-?(0|[1-9][0-9]*)`
fn is_integer_token(s: &str) -> bool {
    let digits = s.strip_prefix('-').unwrap_or(s);
    matches!(digits.as_bytes(), [b'0'] | [b'1'..=b'9', ..])
        && digits.bytes().all(|b| b.is_ascii_digit())
}

/// The JSON number grammar (RFC 8259 §6), so the token can be emitted as is.
fn is_number_token(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = usize::from(b.first() == Some(&b'-'));
    let digits = |i: &mut usize| {
        let start = *i;
        while b.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i - start
    };
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            digits(&mut i);
        }
        _ => return false,
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

/// `\x48656c6c6f` (hex output) or, should it ever arrive, the escape format.
fn bytea_base64(text: &str) -> Option<String> {
    let bytes = match text.strip_prefix("\\x") {
        Some(hex_digits) => hex::decode(hex_digits).ok()?,
        None => bytea_unescape(text.as_bytes())?,
    };
    Some(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// bytea escape format: `\\` is a backslash, `\ooo` an octal byte, the rest literal.
fn bytea_unescape(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while let Some(&b) = s.get(i) {
        if b != b'\\' {
            out.push(b);
            i += 1;
        } else if s.get(i + 1) == Some(&b'\\') {
            out.push(b'\\');
            i += 2;
        } else {
            let octal = s.get(i + 1..i + 4)?;
            if !octal.iter().all(|d| (b'0'..=b'7').contains(d)) {
                return None;
            }
            let v = octal
                .iter()
                .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
            out.push(u8::try_from(v).ok()?);
            i += 4;
        }
    }
    Some(out)
}

/// Cursor over ASCII text for the fixed-width date/time shapes.
struct Scan<'a> {
    s: &'a [u8],
    i: usize,
}

impl Scan<'_> {
    /// 1 to 6 fraction digits after the `.`, trailing zeros dropped.
    fn fraction<'t>(&mut self, text: &'t str) -> Option<&'t str> {
        let start = self.i;
        while self.s.get(self.i).is_some_and(u8::is_ascii_digit) {
            self.i += 1;
        }
        if !(1..=6).contains(&(self.i - start)) {
            return None;
        }
        Some(text[start..self.i].trim_end_matches('0'))
    }

    /// `+HH[:MM[:SS]]` or `-HH[:MM[:SS]]`, in seconds east of UTC.
    fn utc_offset(&mut self) -> Option<i32> {
        let sign: i32 = if self.eat(b'+') {
            1
        } else if self.eat(b'-') {
            -1
        } else {
            return None;
        };
        let h = self.digits(2)?;
        let m = if self.eat(b':') { self.digits(2)? } else { 0 };
        let s = if self.eat(b':') { self.digits(2)? } else { 0 };
        Some(sign * i32::try_from(h * 3600 + m * 60 + s).ok()?)
    }

    fn digits(&mut self, n: usize) -> Option<u32> {
        let part = self.s.get(self.i..self.i + n)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        self.i += n;
        Some(part.iter().fold(0, |acc, d| acc * 10 + u32::from(d - b'0')))
    }

    fn eat(&mut self, c: u8) -> bool {
        let hit = self.s.get(self.i) == Some(&c);
        self.i += usize::from(hit);
        hit
    }

    fn done(&self) -> bool {
        self.i == self.s.len()
    }
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff]` plus, with `tz`, an offset `±HH[:MM[:SS]]`
/// -> `YYYY-MM-DDTHH:MM:SS[.fff]` (+ `Z`, converted to UTC). Trailing zeros of
/// the fraction are dropped. BC dates, years beyond 9999 and `infinity` have
/// no RFC 3339 form and return `None` (so they stay Postgres' text).
fn timestamp(text: &str, tz: bool) -> Option<String> {
    let mut sc = Scan {
        s: text.as_bytes(),
        i: 0,
    };
    let year = sc.digits(4)?;
    let month = sc.eat(b'-').then(|| sc.digits(2)).flatten()?;
    let day = sc.eat(b'-').then(|| sc.digits(2)).flatten()?;
    let hour = sc.eat(b' ').then(|| sc.digits(2)).flatten()?;
    let minute = sc.eat(b':').then(|| sc.digits(2)).flatten()?;
    let second = sc.eat(b':').then(|| sc.digits(2)).flatten()?;
    let fraction = if sc.eat(b'.') { sc.fraction(text)? } else { "" };
    let offset_seconds = if tz { sc.utc_offset()? } else { 0 };
    if !sc.done() {
        return None;
    }
    let date = time::Date::from_calendar_date(
        i32::try_from(year).ok()?,
        time::Month::try_from(u8::try_from(month).ok()?).ok()?,
        u8::try_from(day).ok()?,
    )
    .ok()?;
    let clock = time::Time::from_hms(
        u8::try_from(hour).ok()?,
        u8::try_from(minute).ok()?,
        u8::try_from(second).ok()?,
    )
    .ok()?;
    // Offsets are whole seconds, so shifting leaves the fraction as printed.
    let utc = time::PrimitiveDateTime::new(date, clock)
        .checked_sub(time::Duration::seconds(i64::from(offset_seconds)))?;
    if !(1..=9999).contains(&utc.year()) {
        return None;
    }
    Some(rfc3339_text(utc, fraction, tz))
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction][Z]`.
fn rfc3339_text(utc: time::PrimitiveDateTime, fraction: &str, zulu: bool) -> String {
    let mut out = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        utc.year(),
        u8::from(utc.month()),
        utc.day(),
        utc.hour(),
        utc.minute(),
        utc.second()
    );
    if !fraction.is_empty() {
        out.push('.');
        out.push_str(fraction);
    }
    if zulu {
        out.push('Z');
    }
    out
}

/// Postgres array text (`{a,"b c",NULL}`, nested `{{1,2},{3,4}}`, optionally
/// prefixed by dimensions like `[0:1]=`) -> nested JSON arrays.
fn array(element: &ValueKind, text: &str) -> Option<Value> {
    let delimiter = if *element == ValueKind::GeoBox {
        b';'
    } else {
        b','
    };
    let mut s = text.as_bytes();
    if s.first() == Some(&b'[') {
        let eq = s.iter().position(|&b| b == b'=')?;
        s = &s[eq + 1..];
    }
    let mut p = ArrayParser {
        s,
        i: 0,
        delimiter,
        element,
    };
    let value = p.level(0)?;
    p.skip_space();
    (p.i == p.s.len()).then_some(value)
}

struct ArrayParser<'a> {
    s: &'a [u8],
    i: usize,
    delimiter: u8,
    element: &'a ValueKind,
}

/// Postgres allows at most 6 dimensions; a little slack, then give up (no
/// unbounded recursion on hostile input).
const MAX_ARRAY_DEPTH: usize = 16;

impl ArrayParser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn skip_space(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_whitespace()) {
            self.i += 1;
        }
    }

    /// One `{...}` level; the cursor is on its `{`.
    fn level(&mut self, depth: usize) -> Option<Value> {
        if depth > MAX_ARRAY_DEPTH || self.peek() != Some(b'{') {
            return None;
        }
        self.i += 1;
        let mut items = Vec::new();
        self.skip_space();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Some(Value::Array(items));
        }
        loop {
            self.skip_space();
            let item = match self.peek()? {
                b'{' => self.level(depth + 1)?,
                b'"' => {
                    let text = self.quoted()?;
                    to_json(self.element, &text)
                }
                _ => match self.unquoted()? {
                    None => Value::Null,
                    Some(text) => to_json(self.element, &text),
                },
            };
            items.push(item);
            self.skip_space();
            match self.peek()? {
                b'}' => {
                    self.i += 1;
                    return Some(Value::Array(items));
                }
                b if b == self.delimiter => self.i += 1,
                _ => return None,
            }
        }
    }

    /// `"..."` with backslash escapes; the cursor is on the opening quote.
    fn quoted(&mut self) -> Option<String> {
        self.i += 1;
        let mut out = Vec::new();
        loop {
            match self.peek()? {
                b'"' => {
                    self.i += 1;
                    return String::from_utf8(out).ok();
                }
                b'\\' => {
                    out.push(*self.s.get(self.i + 1)?);
                    self.i += 2;
                }
                b => {
                    out.push(b);
                    self.i += 1;
                }
            }
        }
    }

    /// An unquoted element up to the delimiter or `}`; `None` for NULL.
    fn unquoted(&mut self) -> Option<Option<String>> {
        let mut out = Vec::new();
        let mut escaped = false;
        while let Some(b) = self.peek() {
            if b == self.delimiter || b == b'}' {
                break;
            }
            if matches!(b, b'{' | b'"') {
                return None;
            }
            if b == b'\\' {
                out.push(*self.s.get(self.i + 1)?);
                escaped = true;
                self.i += 2;
            } else {
                out.push(b);
                self.i += 1;
            }
        }
        // Trailing blanks around unquoted elements are not part of the value.
        while out.last().is_some_and(|b| b.is_ascii_whitespace()) && !escaped {
            out.pop();
        }
        if out.is_empty() {
            return None;
        }
        if !escaped && out.eq_ignore_ascii_case(b"NULL") {
            return Some(None);
        }
        String::from_utf8(out).ok().map(Some)
    }
}

#[cfg(test)]
mod tests;
