#!/usr/bin/ruby
# frozen_string_literal: true

# b3lb post_publish hook: BigBlueButton runs every script in
# /usr/local/bigbluebutton/core/scripts/post_publish/ as `ruby <script> -m <meeting_id> -f <format>`
# after a recording format was published. This one only queues the recording for b3lb-push
# (node/b3lb_push.py), which decides whether b3lb tagged the meeting and does the upload later.

require 'optparse'

meeting_id = nil
format = nil
parser = OptionParser.new do |opts|
  opts.on('-m', '--meeting-id ID') { |value| meeting_id = value }
  opts.on('-f', '--format FORMAT') { |value| format = value }
end
begin
  parser.parse!(ARGV)
rescue OptionParser::ParseError => e
  abort("b3lb_push.rb: #{e.message}")
end

# b3lb takes the presentation format's folder; other formats of the same meeting have nothing to add.
exit 0 unless format.nil? || format == 'presentation'
abort('b3lb_push.rb: missing -m <meeting_id>') if meeting_id.nil? || meeting_id.empty?

exec(ENV.fetch('B3LB_PUSH', '/usr/local/bin/b3lb-push'), 'enqueue', '--meeting-id', meeting_id)
