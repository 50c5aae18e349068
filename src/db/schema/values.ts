// The value lists that the schema's enum columns and the runtime share. Here, not in the schema
// files, so that code on the worker's path can use them without loading drizzle-orm (the schema
// files are for drizzle-kit and migrations; loading drizzle-orm costs ~0.3 s and ~100 MB at start).
export const COMPLIANCE_TYPES = ['GDPR', 'SOX', 'HIPAA'] as const

export const ENTERPRISE_RUN_STATUSES = ['running', 'completed', 'partial', 'failed'] as const
export const ENTERPRISE_MEMBER_STATUSES = [
  'starting',
  'running',
  'completed',
  'failed',
  'cancelled',
  'rejected',
] as const
