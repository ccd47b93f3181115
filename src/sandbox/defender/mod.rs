//! Defender/Entra emulator (being written).
