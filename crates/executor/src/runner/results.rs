//! How much of a task's result and artifacts the thread document takes (the quotas on what
//! one device may make another hold), and what is said about the rest.

use errand_sync::quota::Quotas;

/// Why an artifact is not stored: it is larger than [`Quotas::max_blob_bytes`].
pub(super) fn blob_refusal(name: &str, size: usize, quotas: &Quotas) -> Option<String> {
    (size > quotas.max_blob_bytes).then(|| {
        format!(
            "the artifact {name} ({size} bytes) was left out: more than the limit of {} bytes an artifact may hold (max_blob_bytes)",
            quotas.max_blob_bytes
        )
    })
}

/// The longest start of `text` of at most `max` bytes.
fn start_of(text: &str, max: usize) -> &str {
    let mut cut = max.min(text.len());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    &text[..cut]
}

/// Splits a result into what fits the document ([`Quotas::max_result_bytes`]) and, when it
/// does not fit, the text of the artifact `result.txt`: the whole result, or as much of its
/// start as an artifact may hold ([`Quotas::max_blob_bytes`]).
pub(super) fn split_result(text: &str, quotas: &Quotas) -> (String, Option<Vec<u8>>) {
    if text.len() <= quotas.max_result_bytes {
        return (text.to_owned(), None);
    }
    let shown = start_of(text, quotas.max_result_bytes);
    let kept = start_of(text, quotas.max_blob_bytes);
    let note = if kept.len() == text.len() {
        format!(
            "… (the whole result, {} bytes, is the artifact result.txt)",
            text.len()
        )
    } else {
        format!(
            "… (the result is {} bytes; the artifact result.txt holds its first {}, the limit of an artifact (max_blob_bytes))",
            text.len(),
            kept.len()
        )
    };
    (format!("{shown}\n{note}"), Some(kept.as_bytes().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: Quotas = Quotas {
        max_result_bytes: 10,
        max_blob_bytes: 30,
        ..Quotas::DEFAULT
    };

    #[test]
    fn a_long_result_keeps_its_start_and_the_artifact_at_most_the_blob_limit() {
        assert_eq!(split_result("short", &SMALL), ("short".to_owned(), None));

        let (shown, whole) = split_result("0123456789abcdef", &SMALL);
        assert_eq!(
            shown,
            "0123456789\n… (the whole result, 16 bytes, is the artifact result.txt)"
        );
        assert_eq!(whole.as_deref(), Some(&b"0123456789abcdef"[..]));

        let long = "é".repeat(40);
        let (shown, kept) = split_result(&long, &SMALL);
        let kept = kept.expect("an artifact");
        assert_eq!(kept.len(), 30);
        assert!(
            shown.starts_with("ééééé\n")
                && shown.ends_with(
                    "(the result is 80 bytes; the artifact result.txt holds its first 30, the limit of an artifact (max_blob_bytes))"
                ),
            "{shown}"
        );
        assert_eq!(
            split_result(&"x".repeat(100_000), &Quotas::DEFAULT).0.len(),
            16 * 1024 + "\n… (the whole result, 100000 bytes, is the artifact result.txt)".len()
        );
    }

    #[test]
    fn an_artifact_over_the_blob_limit_is_left_out_saying_which_limit() {
        assert_eq!(blob_refusal("shot.png", 30, &SMALL), None);
        assert_eq!(
            blob_refusal("shot.png", 31, &SMALL).as_deref(),
            Some(
                "the artifact shot.png (31 bytes) was left out: more than the limit of 30 bytes an artifact may hold (max_blob_bytes)"
            )
        );
        assert!(blob_refusal("big", 16 * 1024 * 1024 + 1, &Quotas::DEFAULT).is_some());
    }
}
