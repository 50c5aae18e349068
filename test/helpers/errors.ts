// The error code (SQLSTATE or the library's `code`) a promise rejects with, or 'no error'.
export async function errorCode(p: Promise<unknown>): Promise<string> {
  try {
    await p
  } catch (error) {
    return String((error as { code?: unknown }).code)
  }
  return 'no error'
}
