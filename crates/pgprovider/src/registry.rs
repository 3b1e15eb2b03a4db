//! registry stub
