//! `weftctl explain`: what a `reason` in a record or metric means and what to do about it,
//! from the catalogue the book's troubleshooting reference is generated from. No agent needed.

use weft_api::reasons::{self, ReasonDoc, CATALOGUE};

use crate::{
    cli::Output,
    render::{self, RenderError},
};

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("Weft reports no reason {0:?}: `weftctl explain` lists every one")]
    Unknown(String),
    #[error(transparent)]
    Render(#[from] RenderError),
}

/// One reason in full, or, with none named, every reason with its meaning.
pub fn explain(reason: Option<&str>, output: Output) -> Result<String, ExplainError> {
    let Some(name) = reason else {
        return Ok(render::show(output, CATALOGUE, |all| {
            render::table(
                &["REASON", "WHERE", "MEANING"],
                all.iter().map(|r| {
                    vec![
                        r.name.to_owned(),
                        seen(r, ", ", false),
                        r.meaning.to_owned(),
                    ]
                }),
            )
        })?);
    };
    let doc = reasons::find(name).ok_or_else(|| ExplainError::Unknown(name.to_owned()))?;
    Ok(render::show(output, doc, |r| {
        format!(
            "{}\n  Meaning:     {}\n  What to do:  {}\n  Seen in:     {}",
            r.name,
            r.meaning,
            r.action,
            seen(r, "\n               ", true)
        )
    })?)
}

fn seen(doc: &ReasonDoc, separator: &str, long: bool) -> String {
    doc.seen
        .iter()
        .map(|s| {
            if long {
                s.describe().replace('`', "")
            } else {
                format!("{s:?}").to_lowercase()
            }
        })
        .collect::<Vec<_>>()
        .join(separator)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_reason_shows_its_meaning_and_action_and_an_unknown_one_is_refused() {
        let text = explain(Some("no_ready_endpoints"), Output::Table).expect("known");
        assert!(text.starts_with("no_ready_endpoints\n  Meaning:"), "{text}");
        assert!(
            text.contains("What to do:  Check the Service's selector"),
            "{text}"
        );
        assert!(text.contains("weftctl requests"), "{text}");
        let json = explain(Some("circuit_open"), Output::Json).expect("json");
        assert!(json.contains("\"seen\": [\n    \"request\"\n  ]"), "{json}");
        let err = explain(Some("no_such"), Output::Table).expect_err("unknown");
        assert!(err
            .to_string()
            .contains("`weftctl explain` lists every one"));
        let all = explain(None, Output::Table).expect("all");
        assert_eq!(all.lines().count(), CATALOGUE.len() + 1, "{all}");
    }
}
