/*
 * kesd launcher: the compiled program installed as /usr/bin/kesd that carries the file capability
 * cap_ipc_lock=+ep.
 *
 * The kernel ignores file capabilities on "#!" scripts, so the capability must sit on a real
 * executable. This one runs exactly one thing, a fixed interpreter in isolated mode on a fixed
 * script (KESD_PYTHON -I KESD_SCRIPT ARGS...), and hands it CAP_IPC_LOCK as an ambient capability so
 * that kesd can mlockall(2) its memory. Nothing the caller controls can choose other code:
 *  - the interpreter and the script are compiled in; the caller's arguments only follow the script;
 *  - "-I" makes Python ignore PYTHON* variables, the user site directory and the current directory;
 *  - python3 has no file capabilities of its own, so its dynamic loader runs without AT_SECURE and
 *    would honour LD_PRELOAD and friends: the environment is therefore rebuilt from a short
 *    allow-list (systemd's protocol variables, locale, KESD_ and KES_ for the config's ${NAME}
 *    values) and everything else, LD_* and PYTHON* included, is dropped;
 *  - only CAP_IPC_LOCK is raised, to the inheritable and ambient sets, and only when it is already
 *    permitted (from the file capability or from systemd's AmbientCapabilities=). kesd clears the
 *    ambient and inheritable sets again once it has started (kesd/memlock.py), so nothing it might
 *    spawn inherits the capability.
 *
 * SPDX-License-Identifier: Apache-2.0
 */
#define _GNU_SOURCE
#include <linux/capability.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef KESD_PYTHON
#define KESD_PYTHON "/usr/bin/python3"
#endif
#ifndef KESD_SCRIPT
#define KESD_SCRIPT "/usr/lib/kesd/kesd.py"
#endif
#define KESD_PATH "PATH=/usr/sbin:/usr/bin:/sbin:/bin"

#ifndef PR_CAP_AMBIENT
#define PR_CAP_AMBIENT 47
#define PR_CAP_AMBIENT_RAISE 2
#endif

extern char **environ;

/* Variables passed through unchanged (exact names). */
static const char *const keep_exact[] = {
	"NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "JOURNAL_STREAM",
	"WATCHDOG_USEC", "WATCHDOG_PID", "INVOCATION_ID", "RUNTIME_DIRECTORY", "STATE_DIRECTORY",
	"CONFIGURATION_DIRECTORY",
	/* click's shell completion for kesd: plain strings that click reads */
	"_KESD_COMPLETE", "COMP_WORDS", "COMP_CWORD",
	NULL,
};

/* Variables passed through by prefix: the config's ${NAME} values use KESD_ or KES_ names. */
static const char *const keep_prefix[] = { "KESD_", "KES_", NULL };

/* Locale and time zone variables: kept only when their value cannot name a file of the caller's. */
static int safe_locale(const char *name, size_t len, const char *value)
{
	if ((len == 4 && strncmp(name, "LANG", 4) == 0) || strncmp(name, "LC_", 3) == 0)
		return strchr(value, '/') == NULL;
	if (len == 2 && strncmp(name, "TZ", 2) == 0)
		return value[0] != '/' && value[0] != ':' && strstr(value, "..") == NULL;
	return -1; /* not a locale variable */
}

static int keep(const char *entry)
{
	const char *eq = strchr(entry, '=');
	size_t len;
	int locale;

	if (eq == NULL || eq == entry)
		return 0;
	len = (size_t)(eq - entry);
	locale = safe_locale(entry, len, eq + 1);
	if (locale >= 0)
		return locale;
	for (const char *const *p = keep_exact; *p != NULL; p++)
		if (strlen(*p) == len && strncmp(entry, *p, len) == 0)
			return 1;
	for (const char *const *p = keep_prefix; *p != NULL; p++)
		if (len > strlen(*p) && strncmp(entry, *p, strlen(*p)) == 0)
			return 1;
	return 0;
}

/* Pass CAP_IPC_LOCK on across execve(2) if this process holds it; silently nothing otherwise. */
static void pass_on_ipc_lock(void)
{
	struct __user_cap_header_struct header = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3];
	const unsigned int index = CAP_TO_INDEX(CAP_IPC_LOCK);
	const __u32 mask = CAP_TO_MASK(CAP_IPC_LOCK);

	memset(data, 0, sizeof(data));
	if (syscall(SYS_capget, &header, data) != 0 || !(data[index].permitted & mask))
		return;
	if (!(data[index].inheritable & mask)) {
		data[index].inheritable |= mask;
		if (syscall(SYS_capset, &header, data) != 0)
			return;
	}
	(void)prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_IPC_LOCK, 0, 0);
}

int main(int argc, char **argv)
{
	size_t n = 0, kept = 0;
	char **env, **args;
	int first = argc > 0 ? 1 : 0; /* argc may be 0: then there are no arguments to pass */

	for (char **e = environ; e != NULL && *e != NULL; e++)
		n++;
	env = calloc(n + 2, sizeof(char *));
	args = calloc((size_t)(argc > 0 ? argc : 1) + 3, sizeof(char *));
	if (env == NULL || args == NULL) {
		fputs("kesd: out of memory\n", stderr);
		return 127;
	}
	env[kept++] = KESD_PATH;
	for (size_t i = 0; i < n; i++)
		if (keep(environ[i]))
			env[kept++] = environ[i];
	env[kept] = NULL;

	args[0] = KESD_PYTHON;
	args[1] = "-I";
	args[2] = KESD_SCRIPT;
	for (int i = first; i < argc; i++)
		args[3 + i - first] = argv[i];
	args[3 + argc - first] = NULL;

	pass_on_ipc_lock();
	execve(KESD_PYTHON, args, env);
	fprintf(stderr, "kesd: cannot run %s: ", KESD_PYTHON);
	perror(NULL);
	return 127;
}
