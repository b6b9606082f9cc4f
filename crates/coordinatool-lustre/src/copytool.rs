//! Safe copytool API over the run-time loaded liblustreapi.
