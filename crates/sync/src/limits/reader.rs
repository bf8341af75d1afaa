//! A cursor over untrusted bytes: every read checks what is left, nothing allocates.

use super::Refusal;

#[derive(Debug)]
pub(super) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Self {
        Reader { rest: bytes }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    pub(super) fn rest(&self) -> &'a [u8] {
        self.rest
    }

    pub(super) fn u8(&mut self, what: &'static str) -> Result<u8, Refusal> {
        let (&first, rest) = self.rest.split_first().ok_or(Refusal::Truncated(what))?;
        self.rest = rest;
        Ok(first)
    }

    pub(super) fn take(&mut self, len: u64, what: &'static str) -> Result<&'a [u8], Refusal> {
        let len = usize::try_from(len).map_err(|_| Refusal::Truncated(what))?;
        if len > self.rest.len() {
            return Err(Refusal::Truncated(what));
        }
        let (taken, rest) = self.rest.split_at(len);
        self.rest = rest;
        Ok(taken)
    }

    /// An unsigned LEB128 number of at most 64 bits.
    pub(super) fn uleb(&mut self, what: &'static str) -> Result<u64, Refusal> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.u8(what)?;
            let bits = u64::from(byte & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(Refusal::BadNumber(what));
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(Refusal::BadNumber(what))
    }

    /// A signed LEB128 number of at most 64 bits.
    pub(super) fn sleb(&mut self, what: &'static str) -> Result<i64, Refusal> {
        let mut value = 0i64;
        for shift in (0..64).step_by(7) {
            let byte = self.u8(what)?;
            value |= i64::from(byte & 0x7f).wrapping_shl(shift);
            if byte & 0x80 == 0 {
                if shift + 7 < 64 && byte & 0x40 != 0 {
                    value |= -1i64 << (shift + 7);
                }
                return Ok(value);
            }
        }
        Err(Refusal::BadNumber(what))
    }
}
