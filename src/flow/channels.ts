// LISTEN/NOTIFY channels. Notifications are emitted by the same statements that decide readiness
// or cancellation, so they are delivered exactly when those transactions commit.

/** Payload: a queue name. Workers serving that queue fetch at once instead of at their next poll. */
export const READY_CHANNEL = 'equilateral_ready'
/** Payload: comma-separated task ids whose running agents must be aborted (their workflow was cancelled). */
export const CANCEL_CHANNEL = 'equilateral_cancel'
/**
 * Payload: comma-separated ids of workflows that ended (completed, failed, cancelled). Sent by the
 * statement that ends them; wakes the callers awaiting their result (src/flow/ends.ts).
 */
export const ENDED_CHANNEL = 'equilateral_ended'
/**
 * Payload: JSON `{"t": tenant id, "w": [workflow ids]}` (`"w": "*"` when a transaction touched too
 * many to name): workflows whose tasks changed state. Sent only while a console watches the tenant
 * (a live row in console_watchers), once per transaction; src/web/live.ts listens and hands each
 * tenant's notifications to that tenant's event streams only.
 */
export const PROGRESS_CHANNEL = 'equilateral_progress'
