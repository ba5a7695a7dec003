use super::*;

const UPDATE: &str = r#"{"before":{"id":"7","stage":"open","score":10,"amount":12.50},"after":{"id":"7","stage":"won","score":12,"amount":99.95},"diff":{"stage":"won","score":12,"amount":99.95}}"#;
const CREATE: &str = r#"{"before":{},"after":{"id":"8","stage":"won","score":3},"diff":{"id":"8","stage":"won","score":3}}"#;

fn eval(expr: &str, name: &str, body: &str) -> Result<bool, EvalError> {
    let f = ContentFilter::compile(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
    f.matches(&FilterInput::new(name, body.as_bytes())?)
}

#[test]
fn a_transition_filter_selects_the_transition() {
    let won = r#"after.stage == "won" && before.stage != "won""#;
    assert_eq!(eval(won, "lead.update", UPDATE), Ok(true));
    let again = UPDATE.replace(r#""stage":"open""#, r#""stage":"won""#);
    assert_eq!(eval(won, "lead.update", &again), Ok(false));
}

#[test]
fn names_numbers_and_maps_are_usable() {
    assert_eq!(
        eval(r#"event == "lead.update""#, "lead.update", UPDATE),
        Ok(true)
    );
    assert_eq!(
        eval(
            r#"slug == "lead" && verb == "update""#,
            "lead.update",
            UPDATE
        ),
        Ok(true)
    );
    assert_eq!(eval("after.score > 11", "lead.update", UPDATE), Ok(true));
    assert_eq!(
        eval("after.score - before.score == 2", "lead.update", UPDATE),
        Ok(true)
    );
    assert_eq!(eval("after.amount > 50.0", "lead.update", UPDATE), Ok(true));
    assert_eq!(eval(r#""stage" in diff"#, "lead.update", UPDATE), Ok(true));
    assert_eq!(eval("has(diff.score)", "lead.update", UPDATE), Ok(true));
    assert_eq!(eval("size(before) == 0", "lead.create", CREATE), Ok(true));
    assert_eq!(
        eval(
            r#"after.stage.startsWith("wo") && after.stage.matches("^w.n$")"#,
            "lead.create",
            CREATE
        ),
        Ok(true)
    );
}

#[test]
fn a_missing_key_or_a_non_bool_is_an_evaluation_error() {
    // `before` of a create is empty: the transition filter cannot decide.
    let err = eval(r#"before.stage != "won""#, "lead.create", CREATE).unwrap_err();
    assert!(
        matches!(err, EvalError::Execution(ref m) if m.contains("stage")),
        "{err}"
    );
    let err = eval("after.score", "lead.create", CREATE).unwrap_err();
    assert_eq!(err, EvalError::NotBool("int".into()));
    assert_eq!(eval("true", "lead.create", "[1]"), Err(EvalError::Body));
}

#[test]
fn a_bad_expression_names_the_position() {
    let e = ContentFilter::compile(r#"after.stage == "won" &&"#).unwrap_err();
    assert_eq!((e.line, e.column), (1, 24), "{e}");
    let e = ContentFilter::compile("after.score + * 2 > 1").unwrap_err();
    assert_eq!((e.line, e.column), (1, 15), "{e}");
    let e = ContentFilter::compile("after.stage ==\n  (\"won\"").unwrap_err();
    assert_eq!(e.line, 2, "{e}");
    let e = ContentFilter::compile(r#"after.stage == "won" && row.x == 1"#).unwrap_err();
    assert_eq!((e.line, e.column), (1, 25), "{e}");
    assert!(e.message.contains("unknown variable `row`"), "{e}");
    assert!(
        e.to_string()
            .starts_with("line 1, column 25 of the expression: "),
        "{e}"
    );
}

#[test]
fn comprehension_variables_are_not_unknown() {
    let f = r#"diff.all(k, k != "secret") && [1, 2].exists(x, x == after.score)"#;
    assert!(ContentFilter::compile(f).is_ok());
}

#[test]
fn debug_shows_the_expression() {
    let f = ContentFilter::compile("true").unwrap();
    assert_eq!(format!("{f:?}"), "ContentFilter(\"true\")");
}
