//! SMS templates: `{{field}}` placeholders filled from a message's data.
//! The configuration checks a template's syntax at start-up; the delivery
//! worker renders it.

use crate::events::OutboundMessage;

/// The `{{field}}` names of an SMS template, or why it is malformed.
pub fn placeholders(template: &str) -> Result<Vec<&str>, String> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| "a `{{` without its `}}`".to_string())?;
        let name = after[..end].trim();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("`{{{{{}}}}}` is not a field name", &after[..end]));
        }
        out.push(name);
        rest = &after[end + 2..];
    }
    Ok(out)
}

/// Fills a template's `{{field}}`s from the message's data; a field the
/// data lacks is an error (a message with a hole is not sent).
pub fn render(template: &str, message: &OutboundMessage) -> Result<String, String> {
    let mut body = template.to_string();
    for name in placeholders(template)? {
        let value = message.data.get(name).ok_or_else(|| {
            format!(
                "template `{}` needs `{name}`, which the message's data lacks",
                message.template
            )
        })?;
        body = body.replace(&format!("{{{{{name}}}}}"), value);
        body = body.replace(&format!("{{{{ {name} }}}}"), value);
    }
    Ok(body)
}
