/* hr_error.c — per-thread error state of the core (no Lua here). */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "hr_core.h"

#define HR_ERRBUF 1024

static _Thread_local char error_message[HR_ERRBUF];
static _Thread_local hr_errcode error_code;

static void set_error_v(hr_errcode code, const char *fmt, va_list ap)
{
    error_code = code;
    vsnprintf(error_message, sizeof error_message, fmt, ap);
}

int hr_fail(hr_errcode code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    set_error_v(code, fmt, ap);
    va_end(ap);
    return -1;
}

void *hr_fail_null(hr_errcode code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    set_error_v(code, fmt, ap);
    va_end(ap);
    return NULL;
}

void hr_error_prefix(const char *fmt, ...)
{
    char prefix[HR_ERRBUF];
    char old[HR_ERRBUF];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, error_message, sizeof old);
    size_t n = strlen(prefix);
    if (n > HR_ERRBUF - 3) n = HR_ERRBUF - 3;
    memcpy(error_message, prefix, n);
    memcpy(error_message + n, ": ", 2);
    size_t rest = HR_ERRBUF - 1 - (n + 2);
    size_t m = strlen(old);
    if (m > rest) m = rest;
    memcpy(error_message + n + 2, old, m);
    error_message[n + 2 + m] = '\0';
}

const char *hr_last_error(void)
{
    return error_message[0] ? error_message : "unknown error";
}

hr_errcode hr_last_errcode(void) { return error_code; }

void hr_clear_error(void)
{
    error_code = HR_OK;
    error_message[0] = '\0';
}
