//! kill -9 of a real `ferry serve` while chunks freeze and retention prunes
//! constantly, and ledger deletion over the API.
