// Names of the database objects the engine owns.

/** Control tables, and the tenant tables in row-level-security mode. */
export const APP_SCHEMA = 'equilateral'
/** pg-boss's own tables. */
export const BOSS_SCHEMA = 'pgboss'
