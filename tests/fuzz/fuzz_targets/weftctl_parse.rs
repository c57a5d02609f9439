//! weftctl's `--since` duration and the `/flows` query: the first line is a duration, the next
//! three are `--from`, `--to` and `--verdict`, the rest a flow as the agent sends it. The
//! query weftctl would send must read back the same on the agent, and filtering never panics.
#![no_main]

use weft_api::{Flow, FlowQuery};
use weft_mesh::flows::FlowFilter;
use weftctl::cli_parse::parse_duration;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.splitn(5, '\n');
    let since_ms = lines.next().and_then(|d| parse_duration(d).ok());
    let mut field = || lines.next().filter(|s| !s.is_empty()).map(str::to_owned);
    let (from, to) = (field(), field());
    let verdict = field().and_then(|v| v.parse().ok());
    let query = FlowQuery {
        from,
        to,
        verdict,
        since_ms,
        port: None,
        follow: false,
    };
    let sent = query.to_query();
    assert_eq!(FlowQuery::parse(Some(&sent)), Ok(query.clone()), "{sent}");
    let _ = FlowQuery::parse(Some(text));
    let filter = FlowFilter::new(query, u64::MAX);
    if let Some(flow) = lines.next().and_then(|f| serde_json::from_str::<Flow>(f).ok()) {
        let _ = filter.matches(&flow);
        let _ = flow.ends();
    }
});
