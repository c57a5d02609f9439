//! weftctl's `--since` duration and flow filters: the first line is a duration, the next three
//! are `--from`, `--to` and `--verdict`, the rest a flow as the agent sends it.
#![no_main]

use weft_agent::cli_parse::{parse_duration, FlowFilter};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.splitn(5, '\n');
    let since_ms = lines.next().and_then(|d| parse_duration(d).ok());
    let mut field = || lines.next().filter(|s| !s.is_empty()).map(str::to_owned);
    let filter = FlowFilter {
        from: field(),
        to: field(),
        verdict: field(),
        since_ms,
        port: None,
    };
    let flow = lines
        .next()
        .and_then(|f| serde_json::from_str(f).ok())
        .unwrap_or(serde_json::Value::Null);
    let _ = filter.matches(&flow);
    let _ = weft_agent::cli_parse::ends(&flow);
});
