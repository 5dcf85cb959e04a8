// Copyright 2026 Cloudflare, Inc.
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
// http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

use crate::*;
use bytes::Bytes;
use http::header;

#[derive(Debug, Clone)]
pub struct CaseHeaderName(Bytes);

impl CaseHeaderName {
    pub fn new(name: String) -> Self {
        CaseHeaderName(name.into())
    }
}

impl CaseHeaderName {
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }

    pub fn from_slice(buf: &[u8]) -> Self {
        CaseHeaderName(Bytes::copy_from_slice(buf))
    }
}

/// A trait that converts into case-sensitive header names.
pub trait IntoCaseHeaderName {
    fn into_case_header_name(self) -> CaseHeaderName;

    /// The name as it goes on the wire, and parsed. The default parses the former.
    fn into_case_and_header_name(self) -> Result<(CaseHeaderName, HeaderName)>
    where
        Self: Sized,
    {
        let case_header_name = self.into_case_header_name();
        let header_name = HeaderName::from_bytes(case_header_name.as_slice())
            .or_err(InvalidHTTPHeader, "invalid header name")?;
        Ok((case_header_name, header_name))
    }
}

/// A header name parsed once, in a `const`: inserting or appending it skips the parse that
/// a `&str` name costs on every call (and, for a name that is not one of `http`'s standard
/// headers, the allocation of its bytes and of their shared copy for the case map). It goes
/// on the wire as written.
#[derive(Debug, Clone)]
pub struct StaticHeaderName {
    case: &'static str,
    name: HeaderName,
}

impl StaticHeaderName {
    /// `name` must be a valid lower-case header name: [`HeaderName::from_static`] panics
    /// otherwise (at compile time, in a `const`).
    pub const fn new(name: &'static str) -> Self {
        StaticHeaderName {
            case: name,
            name: HeaderName::from_static(name),
        }
    }

    pub fn as_str(&self) -> &'static str {
        self.case
    }

    pub fn header_name(&self) -> &HeaderName {
        &self.name
    }
}

impl IntoCaseHeaderName for StaticHeaderName {
    fn into_case_header_name(self) -> CaseHeaderName {
        CaseHeaderName(Bytes::from_static(self.case.as_bytes()))
    }

    fn into_case_and_header_name(self) -> Result<(CaseHeaderName, HeaderName)> {
        Ok((CaseHeaderName(Bytes::from_static(self.case.as_bytes())), self.name))
    }
}

impl IntoCaseHeaderName for &StaticHeaderName {
    fn into_case_header_name(self) -> CaseHeaderName {
        CaseHeaderName(Bytes::from_static(self.case.as_bytes()))
    }

    fn into_case_and_header_name(self) -> Result<(CaseHeaderName, HeaderName)> {
        Ok((
            CaseHeaderName(Bytes::from_static(self.case.as_bytes())),
            self.name.clone(),
        ))
    }
}

impl IntoCaseHeaderName for CaseHeaderName {
    fn into_case_header_name(self) -> CaseHeaderName {
        self
    }
}

impl IntoCaseHeaderName for String {
    fn into_case_header_name(self) -> CaseHeaderName {
        CaseHeaderName(self.into())
    }
}

impl IntoCaseHeaderName for &'static str {
    fn into_case_header_name(self) -> CaseHeaderName {
        CaseHeaderName(self.into())
    }
}

impl IntoCaseHeaderName for HeaderName {
    fn into_case_header_name(self) -> CaseHeaderName {
        CaseHeaderName(titled_header_name(&self))
    }

    fn into_case_and_header_name(self) -> Result<(CaseHeaderName, HeaderName)> {
        Ok((CaseHeaderName(titled_header_name(&self)), self))
    }
}

impl IntoCaseHeaderName for &HeaderName {
    fn into_case_header_name(self) -> CaseHeaderName {
        CaseHeaderName(titled_header_name(self))
    }

    fn into_case_and_header_name(self) -> Result<(CaseHeaderName, HeaderName)> {
        Ok((CaseHeaderName(titled_header_name(self)), self.clone()))
    }
}

impl IntoCaseHeaderName for Bytes {
    fn into_case_header_name(self) -> CaseHeaderName {
        CaseHeaderName(self)
    }
}

fn titled_header_name(header_name: &HeaderName) -> Bytes {
    titled_header_name_str(header_name).map_or_else(
        || Bytes::copy_from_slice(header_name.as_str().as_bytes()),
        |s| Bytes::from_static(s.as_bytes()),
    )
}

pub(crate) fn titled_header_name_str(header_name: &HeaderName) -> Option<&'static str> {
    Some(match *header_name {
        header::ACCEPT_RANGES => "Accept-Ranges",
        header::AGE => "Age",
        header::CACHE_CONTROL => "Cache-Control",
        header::CONNECTION => "Connection",
        header::CONTENT_TYPE => "Content-Type",
        header::CONTENT_ENCODING => "Content-Encoding",
        header::CONTENT_LENGTH => "Content-Length",
        header::DATE => "Date",
        header::TRANSFER_ENCODING => "Transfer-Encoding",
        header::HOST => "Host",
        header::SERVER => "Server",
        header::SET_COOKIE => "Set-Cookie",
        // TODO: add more const header here to map to their titled case
        // TODO: automatically upper case the first letter?
        _ => {
            return None;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_case_header_name() {
        assert_eq!("FoO".into_case_header_name().as_slice(), b"FoO");
        assert_eq!("FoO".to_string().into_case_header_name().as_slice(), b"FoO");
        assert_eq!(header::SERVER.into_case_header_name().as_slice(), b"Server");
    }

    #[test]
    fn test_static_header_name() {
        const NAME: StaticHeaderName = StaticHeaderName::new("x-forwarded-for");
        let (case, name) = NAME.into_case_and_header_name().unwrap();
        assert_eq!(case.as_slice(), b"x-forwarded-for");
        assert_eq!(name, HeaderName::from_static("x-forwarded-for"));
        let (case, name) = (&NAME).into_case_and_header_name().unwrap();
        assert_eq!(case.as_slice(), b"x-forwarded-for");
        assert_eq!(name.as_str(), "x-forwarded-for");
        // The default still parses, and refuses what is not a header name.
        let (case, name) = "X-Foo".into_case_and_header_name().unwrap();
        assert_eq!((case.as_slice(), name.as_str()), (&b"X-Foo"[..], "x-foo"));
        assert!("bad name".into_case_and_header_name().is_err());
    }
}
