//! What a 3scale installation consists of, for the tests that back it up and restore it:
//! the 13 Secrets and 7 ConfigMaps its backup procedure exports (shared/seeds/
//! 3scale-backups.txt).

/// The Secrets the seed's backup exports, in its order.
pub const SECRETS: [&str; 13] = [
    "system-smtp",
    "system-seed",
    "system-database",
    "backend-internal-api",
    "system-events-hook",
    "system-app",
    "system-recaptcha",
    "system-redis",
    "zync",
    "system-master-apicast",
    "backend-listener",
    "backend-redis",
    "system-memcache",
];

/// The ConfigMaps the seed's backup exports.
pub const CONFIGMAPS: [&str; 7] = [
    "system-environment",
    "apicast-environment",
    "backend-environment",
    "mysql-extra-conf",
    "mysql-main-conf",
    "redis-config",
    "system",
];
