//! Statement and migration texts from the `.sql` files beside this module (`sql/`): each
//! file is SQL with `{name}` placeholders for the table's quoted names and for fragments, and
//! `--` comment lines that say what it takes and returns.

/// A statement: comment lines dropped, `vars` filled in (placeholders not in `vars` are left
/// for later), each line trimmed and the non-empty ones joined by single spaces (none after
/// an opening or before a closing parenthesis at a line break), so that the text sent is
/// compact and the same whatever the file's layout.
pub(crate) fn statement(template: &str, vars: &[(&str, &str)]) -> String {
    let filled = fill(&uncommented(template), vars);
    let mut out = String::with_capacity(filled.len());
    for line in filled.lines().map(str::trim).filter(|l| !l.is_empty()) {
        // No space inside a parenthesis opened or closed at a line break.
        if !(out.is_empty() || out.ends_with('(') || line.starts_with(')')) {
            out.push(' ');
        }
        out.push_str(line);
    }
    out
}

/// A script (a migration): comment lines dropped and `vars` filled in, its lines kept.
pub(crate) fn script(template: &str, vars: &[(&str, &str)]) -> String {
    let mut out = fill(&uncommented(template), vars);
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

/// `text` without its `--` comment lines.
fn uncommented(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if !line.trim_start().starts_with("--") {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// `text` with each `{name}` of `vars` replaced by its value, in one pass (values are not
/// searched again); any other brace is kept as it is.
fn fill(text: &str, vars: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let value = after.find('}').and_then(|close| {
            let name = &after[..close];
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v, close))
        });
        match value {
            Some((v, close)) => {
                out.push_str(v);
                rest = &after[close + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_statement_is_compacted_and_filled() {
        let sql =
            "-- a comment {t}\nSELECT a,\n   b FROM {t}\n\n  WHERE {later} = {x} AND (\n c\n)\n";
        assert_eq!(
            statement(sql, &[("t", "\"s\".\"t\""), ("x", "{t}")]),
            "SELECT a, b FROM \"s\".\"t\" WHERE {later} = {t} AND (c)"
        );
    }

    #[test]
    fn a_script_keeps_its_lines() {
        assert_eq!(
            script("-- head\nCREATE TABLE {t} (\n  a int\n);", &[("t", "x")]),
            "CREATE TABLE x (\n  a int\n);\n"
        );
    }
}
