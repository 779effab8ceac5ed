//! An HTTP/1.1 request head, parsed: what the tests' servers (`chaos`, the
//! webhook `receiver`) read before the body.

pub(crate) struct Head {
    /// Its length in bytes: the body starts there.
    pub len: usize,
    pub method: String,
    pub path: String,
    /// Names lower-cased.
    pub headers: Vec<(String, String)>,
}

/// The head at the start of `buf`; `Ok(None)` while it is incomplete.
pub(crate) fn parse(buf: &[u8]) -> Result<Option<Head>, httparse::Error> {
    let mut names = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut names);
    Ok(match req.parse(buf)? {
        httparse::Status::Complete(len) => Some(Head {
            len,
            method: req.method.unwrap_or_default().to_owned(),
            path: req.path.unwrap_or_default().to_owned(),
            headers: req
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect(),
        }),
        httparse::Status::Partial => None,
    })
}
