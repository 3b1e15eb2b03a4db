//! pool stub
