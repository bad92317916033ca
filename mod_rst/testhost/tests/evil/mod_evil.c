/*
 * A deliberately misbehaving FreeSWITCH module, to show that fs-testhost
 * reports misuse instead of crashing. Declares only what it uses, with the
 * 1.10 layouts (void pointers where the host owns the structure).
 */
#include <stddef.h>
#include <stdint.h>

typedef int status_t;
typedef void *(*app_fn)(void *session, const char *data);
typedef int (*bug_cb)(void *bug, void *user_data, int abc);

struct table { int api_version; void *load; void *shutdown; void *runtime; unsigned flags; };
struct module_iface { const char *name; void *other[4]; void *apps; void *o2; void *apis; };
struct app_iface { const char *name; void *fn; const char *ld, *sd, *syntax; unsigned flags; };

extern void *switch_loadable_module_create_module_interface(void *pool, const char *name);
extern void *switch_loadable_module_create_interface(void *module, int iname);
extern void *switch_core_session_perform_locate(const char *uuid, const char *f, const char *fn, int l);
extern void switch_core_session_rwunlock(void *session);
extern status_t switch_core_media_bug_add(void *session, const char *fn, const char *target, bug_cb cb,
										  void *user_data, int64_t stop, unsigned flags, void **bug);
extern status_t switch_core_media_bug_remove(void *session, void **bug);
extern void *switch_core_media_bug_get_native_read_frame(void *bug);
extern void *switch_core_session_get_uuid(void *session);

static void *kept_bug;
static void *kept_session;
static int reads;

static int callback(void *bug, void *user_data, int abc)
{
	(void)user_data;
	if (abc == 1) { /* READ: remove ourselves from inside the callback (deadlocks FreeSWITCH) */
		void *self = bug;
		if (++reads == 3) {
			switch_core_media_bug_remove(kept_session, &self);
		}
	}
	return 1;
}

static void evil(void *session, const char *data)
{
	void *located, *bug = NULL, *copy;
	(void)data;
	located = switch_core_session_perform_locate((const char *)switch_core_session_get_uuid(session), "evil.c", "evil", 1);
	switch_core_session_rwunlock(located);
	switch_core_session_rwunlock(located);                      /* unbalanced */
	switch_core_session_rwunlock((void *)0x1234);               /* not a session */
	switch_core_media_bug_add(session, "evil", NULL, callback, NULL, 0, 0x3, &bug);
	switch_core_media_bug_get_native_read_frame(bug);           /* outside its callback */
	copy = bug;
	switch_core_media_bug_remove(session, &bug);
	switch_core_media_bug_remove(session, &copy);               /* double remove */
	switch_core_media_bug_add(session, "evil", NULL, callback, NULL, 0, 0x3, &bug);
	kept_session = session;                                     /* removes itself in a callback */
	switch_core_media_bug_add(session, "evil", NULL, callback, NULL, 0, 0x6000, &bug);
	kept_bug = bug;                                             /* left attached at shutdown */
}

static status_t load(void **iface, void *pool)
{
	void *module = switch_loadable_module_create_module_interface(pool, "mod_evil");
	struct app_iface *app = switch_loadable_module_create_interface(module, 4);
	app->name = "evil";
	app->fn = (void *)evil;
	*iface = module;
	return 0;
}

static status_t shutdown(void) { return 0; }

struct table mod_evil_module_interface = { 5, (void *)load, (void *)shutdown, NULL, 0 };
