use super::*;
use ValueKind as K;

/// Compact JSON text of a mapped value: what the receiver sees.
fn json(kind: &ValueKind, text: &str) -> String {
    serde_json::to_string(&to_json(kind, text)).unwrap()
}

#[test]
fn kinds_of_builtin_types() {
    for (oid, kind) in [
        (16, K::Bool),
        (21, K::Int),
        (23, K::Int),
        (20, K::Int),
        (26, K::Int),
        (700, K::Float),
        (701, K::Float),
        (1700, K::Numeric),
        (114, K::Json),
        (3802, K::Json),
        (17, K::Bytea),
        (1184, K::TimestampTz),
        (1114, K::Timestamp),
        (1082, K::String),
        (1083, K::String),
        (1266, K::String),
        (1186, K::String),
        (2950, K::String),
        (25, K::String),
        (1043, K::String),
        (1042, K::String),
        (19, K::String),
        (869, K::String),
        (650, K::String),
        (829, K::String),
        (790, K::String),
        (603, K::GeoBox),
    ] {
        assert_eq!(kind_for_type(oid, None), kind, "oid {oid}");
    }
}

#[test]
fn kinds_of_builtin_arrays() {
    for (oid, element) in [
        (1000, K::Bool),
        (1005, K::Int),
        (1007, K::Int),
        (1016, K::Int),
        (1021, K::Float),
        (1022, K::Float),
        (1231, K::Numeric),
        (199, K::Json),
        (3807, K::Json),
        (1001, K::Bytea),
        (1185, K::TimestampTz),
        (1115, K::Timestamp),
        (1009, K::String),
        (1015, K::String),
        (1014, K::String),
        (2951, K::String),
        (1182, K::String),
        (1020, K::GeoBox),
    ] {
        assert_eq!(kind_for_type(oid, None), K::array(element), "oid {oid}");
    }
}

#[test]
fn kinds_of_user_types() {
    assert_eq!(kind_for_type(90001, Some("_mood")), K::array(K::String));
    assert_eq!(kind_for_type(90000, Some("mood")), K::String);
    assert_eq!(kind_for_type(90002, None), K::String);
    // A builtin oid wins over whatever name comes with it.
    assert_eq!(kind_for_type(23, Some("_x")), K::Int);
}

#[test]
fn bools() {
    assert_eq!(json(&K::Bool, "t"), "true");
    assert_eq!(json(&K::Bool, "f"), "false");
    assert_eq!(json(&K::Bool, "maybe"), r#""maybe""#);
}

#[test]
fn integers_are_exact() {
    assert_eq!(json(&K::Int, "42"), "42");
    assert_eq!(json(&K::Int, "-32768"), "-32768");
    assert_eq!(json(&K::Int, "0"), "0");
    assert_eq!(json(&K::Int, "9007199254740993"), "9007199254740993");
    assert_eq!(
        json(&K::Int, "-9223372036854775808"),
        "-9223372036854775808"
    );
    assert_eq!(json(&K::Int, "4294967295"), "4294967295");
    assert_eq!(json(&K::Int, "12a"), r#""12a""#);
    assert_eq!(json(&K::Int, "007"), r#""007""#);
    assert_eq!(json(&K::Int, "1.5"), r#""1.5""#);
    assert_eq!(json(&K::Int, ""), r#""""#);
}

#[test]
fn floats_keep_postgres_shortest_form() {
    for t in [
        "0.1",
        "1e+300",
        "-0",
        "1.5e-07",
        "3.4028235e+38",
        "123456",
        "-2.5",
    ] {
        assert_eq!(json(&K::Float, t), t);
    }
    assert_eq!(json(&K::Float, "NaN"), r#""NaN""#);
    assert_eq!(json(&K::Float, "Infinity"), r#""Infinity""#);
    assert_eq!(json(&K::Float, "-Infinity"), r#""-Infinity""#);
    assert_eq!(json(&K::Float, "1e999"), r#""1e999""#);
    assert_eq!(json(&K::Float, ".5"), r#"".5""#);
}

#[test]
fn numerics_keep_every_digit() {
    assert_eq!(json(&K::Numeric, "12.500000"), "12.500000");
    let thirty = "123456789012345678901234567890";
    assert_eq!(json(&K::Numeric, thirty), thirty);
    let long = "-98765432109876543210.012345678901234567890";
    assert_eq!(json(&K::Numeric, long), long);
    assert_eq!(json(&K::Numeric, "0.000"), "0.000");
    assert_eq!(json(&K::Numeric, "NaN"), r#""NaN""#);
    assert_eq!(json(&K::Numeric, "Infinity"), r#""Infinity""#);
    assert_eq!(json(&K::Numeric, "-Infinity"), r#""-Infinity""#);
}

#[test]
fn json_values_are_embedded_as_is() {
    let nested = r#"{"b": [1.50, {"z": 1e2, "a": null}], "a": "x", "n": 12345678901234567890123}"#;
    assert_eq!(
        json(&K::Json, nested),
        r#"{"b":[1.50,{"z":1e+2,"a":null}],"a":"x","n":12345678901234567890123}"#
    );
    // jsonb prints numbers as numeric does: never an exponent, digits kept.
    assert_eq!(
        json(&K::Json, r#"{"a": 12.500000, "b": -0.0000001}"#),
        r#"{"a":12.500000,"b":-0.0000001}"#
    );
    assert_eq!(json(&K::Json, "\"s\""), r#""s""#);
    assert_eq!(json(&K::Json, "3.10"), "3.10");
    assert_eq!(json(&K::Json, "null"), "null");
    assert_eq!(json(&K::Json, "{bad"), r#""{bad""#);
}

#[test]
fn bytea_is_base64() {
    assert_eq!(json(&K::Bytea, r"\x48656c6c6f"), r#""SGVsbG8=""#);
    assert_eq!(json(&K::Bytea, r"\x"), r#""""#);
    assert_eq!(json(&K::Bytea, r"\x00ff10"), r#""AP8Q""#);
    // Escape format, in case bytea_output were ever not hex.
    assert_eq!(json(&K::Bytea, r"Hi\\\000"), r#""SGlcAA==""#);
    assert_eq!(json(&K::Bytea, r"\xZZ"), r#""\\xZZ""#);
    assert_eq!(json(&K::Bytea, r"\9"), r#""\\9""#);
}

#[test]
fn timestamptz_is_rfc3339_utc() {
    let t = |s| to_json(&K::TimestampTz, s);
    assert_eq!(t("2025-02-21 08:33:28+00"), "2025-02-21T08:33:28Z");
    assert_eq!(t("2025-02-21 08:33:28.148+00"), "2025-02-21T08:33:28.148Z");
    assert_eq!(
        t("2025-02-21 08:33:28.123456+00"),
        "2025-02-21T08:33:28.123456Z"
    );
    assert_eq!(t("2025-02-21 08:33:28.100+00"), "2025-02-21T08:33:28.1Z");
    assert_eq!(t("2025-02-21 08:33:28.000+00"), "2025-02-21T08:33:28Z");
    // Offsets (a session without TimeZone=UTC) are converted to UTC.
    assert_eq!(t("2025-02-21 01:03:28.5+05:30"), "2025-02-20T19:33:28.5Z");
    assert_eq!(t("2025-12-31 23:00:00-02"), "2026-01-01T01:00:00Z");
    assert_eq!(t("1850-01-01 00:00:00+00:09:21"), "1849-12-31T23:50:39Z");
    // No RFC 3339 form: Postgres' text.
    for s in [
        "infinity",
        "-infinity",
        "0044-03-15 12:00:00+00 BC",
        "12025-01-01 00:00:00+00",
        "2025-02-30 00:00:00+00",
        "2025-02-21 08:33:28.1234567+00",
        "2025-02-21 08:33:28",
        "2025-02-21T08:33:28Z",
    ] {
        assert_eq!(t(s), s);
    }
}

#[test]
fn timestamp_has_no_zone() {
    let t = |s| to_json(&K::Timestamp, s);
    assert_eq!(t("2025-02-21 08:33:28.148"), "2025-02-21T08:33:28.148");
    assert_eq!(t("2025-02-21 08:33:28"), "2025-02-21T08:33:28");
    assert_eq!(
        t("2025-02-21 08:33:28.000001"),
        "2025-02-21T08:33:28.000001"
    );
    assert_eq!(t("infinity"), "infinity");
    assert_eq!(t("2025-02-21 08:33:28+00"), "2025-02-21 08:33:28+00");
}

#[test]
fn strings_pass_through() {
    for s in [
        "héllo wörld",
        "🎉👍🏽",
        "",
        "  spaced ",
        "P1DT2H",
        "2025-02-21",
        "10:00:00+02",
    ] {
        assert_eq!(to_json(&K::String, s), Value::String(s.into()));
    }
    assert_eq!(json(&K::String, "a\"b\\c\n"), r#""a\"b\\c\n""#);
}

#[test]
fn text_arrays_with_nulls_and_quotes() {
    let k = kind_for_type(1009, None);
    assert_eq!(
        json(
            &k,
            r#"{a,"b c",NULL,"NULL","with \"quote\"","back\\slash",""}"#
        ),
        r#"["a","b c",null,"NULL","with \"quote\"","back\\slash",""]"#
    );
    assert_eq!(json(&k, "{}"), "[]");
    assert_eq!(json(&k, "{é,🎉}"), r#"["é","🎉"]"#);
    assert_eq!(json(&k, r#"{"a,b","{x}"}"#), r#"["a,b","{x}"]"#);
}

#[test]
fn nested_and_typed_arrays() {
    assert_eq!(json(&K::array(K::Int), "{{1,2},{3,4}}"), "[[1,2],[3,4]]");
    assert_eq!(json(&K::array(K::Int), "[0:1]={7,NULL}"), "[7,null]");
    assert_eq!(
        json(&K::array(K::Numeric), "{1.50,NaN,12345678901234567890.1}"),
        r#"[1.50,"NaN",12345678901234567890.1]"#
    );
    assert_eq!(json(&K::array(K::Bool), "{t,f,NULL}"), "[true,false,null]");
    assert_eq!(
        json(&K::array(K::Json), r#"{"{\"a\": 1.0}",NULL,"[1, 2]"}"#),
        r#"[{"a":1.0},null,[1,2]]"#
    );
    assert_eq!(
        json(&K::array(K::Bytea), r#"{"\\x4869",NULL}"#),
        r#"["SGk=",null]"#
    );
    assert_eq!(
        json(
            &K::array(K::TimestampTz),
            r#"{"2025-02-21 08:33:28.148+00",infinity}"#
        ),
        r#"["2025-02-21T08:33:28.148Z","infinity"]"#
    );
    assert_eq!(
        json(&kind_for_type(1020, None), "{(1,1),(0,0);(2,2),(1,1)}"),
        r#"["(1,1),(0,0)","(2,2),(1,1)"]"#
    );
}

#[test]
fn malformed_arrays_stay_text() {
    for s in [
        "{a,b",
        "{a}}",
        "a,b",
        "{\"a}",
        "{a,{b}",
        "",
        "[1:2]{1,2}",
        "{,}",
    ] {
        assert_eq!(
            to_json(&K::array(K::String), s),
            Value::String(s.into()),
            "{s}"
        );
    }
    let deep = format!("{}{}", "{".repeat(1000), "}".repeat(1000));
    assert_eq!(
        to_json(&K::array(K::Int), &deep),
        Value::String(deep.clone())
    );
}

#[test]
fn writing_matches_the_json_tree() {
    use ValueKind as K;
    let cases: &[(ValueKind, &str)] = &[
        (K::String, "plain"),
        (
            K::String,
            "quote \" backslash \\ newline \n tab \t nul \u{0} é 🎉",
        ),
        (K::Int, "-9007199254740993"),
        (K::Int, "01"),
        (K::Numeric, "12.500000"),
        (K::Numeric, "NaN"),
        (K::Float, "1e-7"),
        (K::Float, "Infinity"),
        (K::Bool, "t"),
        (K::Bool, "f"),
        (K::Bool, "maybe"),
        (K::Json, r#"{"b": 1.50, "a": [1, null]}"#),
        (K::Bytea, "\\x48656c6c6f"),
        (K::TimestampTz, "2025-02-21 08:33:28.148+00"),
        (K::array(K::String), r#"{a,"b c",NULL}"#),
    ];
    for (kind, text) in cases {
        let mut out = Vec::new();
        write_json(&mut out, kind, text);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            to_json(kind, text).to_string(),
            "{kind:?} {text:?}"
        );
    }
}
