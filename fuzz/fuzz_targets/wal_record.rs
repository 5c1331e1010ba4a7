#![no_main]

use ferry_fuzz::Known;

// Known findings crash unless FERRY_FUZZ_KNOWN=skip (see README.md).
libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry_fuzz::wal_record(data, Known::from_env(Known::Crash)));
